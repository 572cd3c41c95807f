"""fusedopt.RMSprop: a drop-in replacement for torch.optim.RMSprop."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fusedopt._optimizer import FusedOptimizer, LaunchGroup, check_lr, check_torch_only_flags, scalar


class RMSprop(FusedOptimizer):
    """RMSprop (Hinton, 2012) with torch.optim.RMSprop's arguments, defaults and numerics, in one fused pass.

    ``centered`` divides by an estimate of the gradient's variance; ``momentum > 0`` keeps a momentum buffer.
    ``foreach`` is accepted for drop-in compatibility and ignored. ``backend`` as in :class:`fusedopt.Adam`.
    """

    _kernel = "rmsprop"
    sparse_grad_message = "RMSprop does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        error_if_nonfinite: bool = False,
        state_dtype: torch.dtype | None = None,
        master_weights: bool | str = False,
        stochastic_rounding: bool = False,
        rounding_seed: int = 0,
    ) -> None:
        # Same checks, order, exception types and messages as torch.optim.RMSprop.__init__.
        check_lr(lr)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        check_torch_only_flags(capturable, differentiable, foreach, None)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
        }
        super().__init__(
            params,
            defaults,
            backend=backend,
            max_grad_norm=max_grad_norm,
            error_if_nonfinite=error_if_nonfinite,
            state_dtype=state_dtype,
            master_weights=master_weights,
            stochastic_rounding=stochastic_rounding,
            rounding_seed=rounding_seed,
        )

    def _state_layout(self, group: dict[str, Any]) -> list[tuple[str, float]]:
        layout = [("square_avg", 0.0)]
        if group["momentum"] > 0:
            layout.append(("momentum_buffer", 0.0))
        if group["centered"]:
            layout.append(("grad_avg", 0.0))
        return layout

    def _launch_signature(self, group: dict[str, Any]) -> tuple:
        return (bool(group["centered"]), scalar(group["momentum"]) > 0)

    def _state_columns(self, launch: LaunchGroup) -> list[list[Tensor]]:
        centered, use_momentum = self._launch_signature(launch.groups[0])
        return [
            launch.column("square_avg"),
            launch.column("grad_avg") if centered else [],
            launch.column("momentum_buffer") if use_momentum else [],
        ]

    def _hyperparameters(self, launch: LaunchGroup) -> dict[str, Any]:
        lr, alpha, eps, weight_decay, momentum, maximize = launch.columns(self._group_hyperparameters)
        return {
            "lr": lr,
            "alpha": alpha,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "maximize": maximize,
            "centered": bool(launch.groups[0]["centered"]),
        }

    @staticmethod
    def _group_hyperparameters(group: dict[str, Any]) -> tuple:
        keys = ("lr", "alpha", "eps", "weight_decay", "momentum")
        return (*map(float, map(group.__getitem__, keys)), bool(group["maximize"]))  # float(): as scalar()
