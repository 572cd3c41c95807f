"""fusedopt.Adam and fusedopt.AdamW: drop-in replacements for torch.optim.Adam and torch.optim.AdamW."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from fusedopt._optimizer import FusedOptimizer, LaunchGroup, check_lr, check_torch_only_flags


def _check_adam_args(lr, betas, eps, weight_decay) -> None:
    # Same checks, order, exception types and messages as torch.optim.Adam.__init__.
    check_lr(lr)
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not (
        (isinstance(betas[0], float) and isinstance(betas[1], float))
        or (isinstance(betas[0], Tensor) and isinstance(betas[1], Tensor))
    ):
        raise ValueError("betas must be either both floats or both Tensors")


# Param groups hold the installed torch.optim's keys, so that checkpoints (torch.distributed.checkpoint's too, which
# loads only keys the target has) move both ways. After torch 2.4, torch.optim.Adam gained decoupled_weight_decay=
# and AdamW became an Adam whose groups say True; where torch's groups have no such key, fusedopt's have it only
# where it differs from the class's own decay (an Adam with decoupled_weight_decay=True).
_TORCH_GROUPS_SAY_DECOUPLED = "decoupled_weight_decay" in inspect.signature(torch.optim.Adam.__init__).parameters
_TORCH_ADAMW_IS_ADAM = issubclass(torch.optim.AdamW, torch.optim.Adam)


class Adam(FusedOptimizer):
    """Adam (Kingma & Ba, 2014) with torch.optim.Adam's arguments, defaults and numerics, in one fused pass.

    Weight decay is the coupled L2 penalty unless ``decoupled_weight_decay=True`` (which makes this AdamW).
    ``foreach`` and ``fused`` are accepted for drop-in compatibility and ignored: fusedopt always fuses.
    ``backend`` is one of "auto", "cuda", "triton", "cpu" or "reference"; the one in use is ``optimizer.backend``.
    """

    sparse_grad_message = "Adam does not support sparse gradients, please consider SparseAdam instead"
    _kernel = "adam"
    #: How a group without a decoupled_weight_decay key (torch before 2.6 has none) decays.
    _decoupled_by_default = False

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        error_if_nonfinite: bool = False,
        state_dtype: torch.dtype | None = None,
        master_weights: bool | str = False,
        stochastic_rounding: bool = False,
        rounding_seed: int = 0,
    ) -> None:
        _check_adam_args(lr, betas, eps, weight_decay)
        check_torch_only_flags(capturable, differentiable, foreach, fused)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
        }
        if _TORCH_GROUPS_SAY_DECOUPLED or decoupled_weight_decay != self._decoupled_by_default:
            defaults["decoupled_weight_decay"] = decoupled_weight_decay
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

    def _decouples(self, group: dict[str, Any]) -> bool:
        return bool(group.get("decoupled_weight_decay", self._decoupled_by_default))

    def _state_layout(self, group: dict[str, Any]) -> list[tuple[str, float]]:
        layout = [("exp_avg", 0.0), ("exp_avg_sq", 0.0)]
        if group["amsgrad"]:
            layout.append(("max_exp_avg_sq", 0.0))
        return layout

    def _launch_signature(self, group: dict[str, Any]) -> tuple:
        return (bool(group["amsgrad"]),)

    def _state_columns(self, launch: LaunchGroup) -> list[list[Tensor]]:
        amsgrad = bool(launch.groups[0]["amsgrad"])
        max_exp_avg_sqs = launch.column("max_exp_avg_sq") if amsgrad else []
        return [launch.column("exp_avg"), launch.column("exp_avg_sq"), max_exp_avg_sqs]

    def _hyperparameters(self, launch: LaunchGroup) -> dict[str, Any]:
        lr, beta1, beta2, weight_decay, eps, maximize, decoupled = launch.columns(self._group_hyperparameters)
        return {
            "lr": lr,
            "beta1": beta1,
            "beta2": beta2,
            "weight_decay": weight_decay,
            "eps": eps,
            "maximize": maximize,
            "decoupled": decoupled,
            "amsgrad": bool(launch.groups[0]["amsgrad"]),
        }

    def _group_hyperparameters(self, group: dict[str, Any]) -> tuple:
        beta1, beta2 = group["betas"]  # float() reads a one-element tensor as scalar() does
        return (
            float(group["lr"]),
            float(beta1),
            float(beta2),
            float(group["weight_decay"]),
            float(group["eps"]),
            bool(group["maximize"]),
            self._decouples(group),
        )


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2017): Adam with decoupled weight decay, like torch.optim.AdamW.

    The parameter is shrunk by ``lr * weight_decay`` directly instead of adding an L2 term to the gradient.
    """

    _decoupled_by_default = True
    if not _TORCH_ADAMW_IS_ADAM:  # torch 2.4 words it for AdamW
        sparse_grad_message = "AdamW does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
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
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            backend=backend,
            max_grad_norm=max_grad_norm,
            error_if_nonfinite=error_if_nonfinite,
            state_dtype=state_dtype,
            master_weights=master_weights,
            stochastic_rounding=stochastic_rounding,
            rounding_seed=rounding_seed,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        # As torch.optim.AdamW: whatever a checkpoint says, AdamW decays decoupled.
        super().__setstate__(state)
        for group in self.param_groups:
            if _TORCH_GROUPS_SAY_DECOUPLED:
                group["decoupled_weight_decay"] = True
            else:
                group.pop("decoupled_weight_decay", None)  # the class decides: _decoupled_by_default
