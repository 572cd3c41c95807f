"""fusedopt.Adagrad: a drop-in replacement for torch.optim.Adagrad (dense gradients)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fusedopt._optimizer import FusedOptimizer, LaunchGroup, check_lr, check_torch_only_flags
from fusedopt._tensors import bucket_by_device_and_dtype


class Adagrad(FusedOptimizer):
    """Adagrad (Duchi et al., 2011) with torch.optim.Adagrad's arguments, defaults and numerics, in one fused pass.

    As in torch.optim, the state of every parameter exists from construction (``sum`` starts at
    ``initial_accumulator_value``). Sparse gradients are not supported; use torch.optim.Adagrad for those.
    ``foreach`` and ``fused`` are accepted for drop-in compatibility and ignored. ``backend`` as in
    :class:`fusedopt.Adam`.
    """

    _kernel = "adagrad"
    sparse_grad_message = (
        "fusedopt.Adagrad does not support sparse gradients; use torch.optim.Adagrad for sparse embeddings"
    )

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        error_if_nonfinite: bool = False,
        state_dtype: torch.dtype | None = None,
        master_weights: bool | str = False,
        stochastic_rounding: bool = False,
        rounding_seed: int = 0,
    ) -> None:
        # Same checks, order, exception types and messages as torch.optim.Adagrad.__init__.
        check_lr(lr)
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        check_torch_only_flags(False, differentiable, foreach, fused)
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
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
        for group in self.param_groups:
            for bucket in bucket_by_device_and_dtype(group["params"]).values():
                self._ensure_state(group, bucket)

    def _state_layout(self, group: dict[str, Any]) -> list[tuple[str, float]]:
        # torch.optim.Adagrad fills with the constructor's value, whatever the group says.
        return [("sum", float(self.defaults["initial_accumulator_value"]))]

    def share_memory(self) -> None:
        """Moves every state sum into shared memory (torch.optim.Adagrad.share_memory)."""
        # The sums move to new memory, whose addresses the step plans do not have (NOTE [step plan]).
        self._step_plans.clear()
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    def _state_columns(self, launch: LaunchGroup) -> list[list[Tensor]]:
        return [launch.column("sum")]

    def _hyperparameters(self, launch: LaunchGroup) -> dict[str, Any]:
        lr, lr_decay, weight_decay, eps, maximize = launch.columns(self._group_hyperparameters)
        return {"lr": lr, "lr_decay": lr_decay, "weight_decay": weight_decay, "eps": eps, "maximize": maximize}

    @staticmethod
    def _group_hyperparameters(group: dict[str, Any]) -> tuple:
        keys = ("lr", "lr_decay", "weight_decay", "eps")
        return (*map(float, map(group.__getitem__, keys)), bool(group["maximize"]))  # float(): as scalar()
