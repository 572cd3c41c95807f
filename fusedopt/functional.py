"""The functional API: one fused update of a list of tensors, by a chosen backend, with no optimizer object.

`adam`, `rmsprop` and `adagrad` take the lists torch.optim's functional API takes and update params and state
in place. Before a backend sees them, tensors are brought to the form every kernel expects, here, once:
- DTensor parameters and state (FSDP2) are replaced by their local shards; the kernel updates the shard.
- Complex tensors become their real view (torch.view_as_real), as torch.optim updates them.
- A non-contiguous param or state is updated through a contiguous copy that is written back afterwards; a
  non-contiguous grad is read through a contiguous copy. Contiguous tensors (the normal case) are used as is.

One call may update the tensors of several param groups (NOTE [param groups in one launch] in
csrc/common/binding_utils.h): with `group_sizes`, the tensors are listed group after group, group_sizes[g] of them
for group g, and every hyperparameter (lr, betas, weight decay, eps, maximize, ...) is a sequence with one value
per group. Without it, the hyperparameters are single values for all tensors, as in torch.optim's functional API.

`masters`/`param_mode`/`rounding_seed` choose what is updated and how parameters are stored: plain,
stochastically rounded, or through float32 masters (fusedopt/_rounding.py). `grad_factor` (a float, or a
one-element tensor that stays on the device and is read by the kernel) multiplies every
gradient as the kernel reads it (GradScaler's 1/scale times the clip coefficient):
NOTE [grad factor] in csrc/include/fusedopt/update_rules.h. `found_inf` (GradScaler's one-element tensor), when
given, makes the call change nothing, step counters included, where it is nonzero, like torch's fused kernels.

`state_steps` are torch.optim's step counters: one-element float32 tensors on the params' device for the GPU
backends (cuda, triton; as torch's fused optimizers keep them), whose kernels read and advance them without the
host ever waiting (NOTE [device steps] in csrc/cuda/fused_cuda.h); CPU tensors for the cpu and reference
backends. `step_counters_on(backend, device)` says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, Union

import torch
from torch import Tensor

from fusedopt import backends
from fusedopt._tensors import is_plain, local_tensor

T = TypeVar("T")
#: A hyperparameter: one value, or with group_sizes one value per param group.
PerGroup = Union[T, Sequence[T]]

_REAL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int16)


def _is_kernel_ready(tensor: Tensor) -> bool:
    """A plain (not DTensor), real, contiguous tensor: the kernels take it as it is."""
    return is_plain(tensor) and tensor.dtype in _REAL_DTYPES and tensor.is_contiguous()


class _KernelOperands:
    """Kernel-ready versions of the operands, and the write-backs owed to the originals after the kernel."""

    def __init__(self) -> None:
        self._write_backs: list[tuple[Tensor, Tensor]] = []

    def readable(self, tensor: Tensor) -> Tensor:
        tensor = self._real(local_tensor(tensor))
        return tensor if tensor.is_contiguous() else tensor.contiguous()

    def writable(self, tensor: Tensor) -> Tensor:
        tensor = self._real(local_tensor(tensor))
        if tensor.is_contiguous():
            return tensor
        proxy = tensor.contiguous()
        self._write_backs.append((tensor, proxy))
        return proxy

    def writable_list(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        if all(map(_is_kernel_ready, tensors)):  # the common case, checked cheaply
            return list(tensors)
        return [self.writable(t) for t in tensors]

    def readable_list(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        if all(map(_is_kernel_ready, tensors)):
            return list(tensors)
        return [self.readable(t) for t in tensors]

    def write_back(self) -> None:
        for original, proxy in self._write_backs:
            original.copy_(proxy)

    @staticmethod
    def _real(tensor: Tensor) -> Tensor:
        return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _per_group(params: Sequence[Tensor], group_sizes: Sequence[int] | None, **hyperparameters) -> dict:
    """The backends' form of the hyperparameters: one list entry per group, and the group sizes."""
    if group_sizes is None:
        group_sizes, hyperparameters = [len(params)], {name: [value] for name, value in hyperparameters.items()}
    group_sizes = [int(size) for size in group_sizes]
    if any(size < 0 for size in group_sizes) or sum(group_sizes) != len(params):
        raise ValueError(f"group_sizes {group_sizes} must be non-negative and add up to the {len(params)} params")
    per_group = {"group_sizes": group_sizes}
    for name, values in hyperparameters.items():
        if isinstance(values, (int, float, bool, Tensor)) or len(values) != len(group_sizes):
            raise ValueError(f"with group_sizes, {name} must have one value per group ({len(group_sizes)})")
        per_group[name] = [value if isinstance(value, bool) else float(value) for value in values]
    return per_group


def _one_float32_on(value: Tensor, name: str, params: Sequence[Tensor]) -> Tensor:
    if value.numel() != 1:
        raise ValueError(f"a tensor {name} must have one element, got {value.numel()}")
    device = local_tensor(params[0]).device if params else value.device
    return value.detach().reshape(1).to(device=device, dtype=torch.float32, non_blocking=True)


def grad_factor_kwargs(grad_factor: float | Tensor, params: Sequence[Tensor], found_inf: Tensor | None = None) -> dict:
    """The backends' form of NOTE [grad factor]: a host float, and a float32 one-element tensor on the params'
    device when the factor is a tensor (GradScaler's 1/scale, the clip coefficient), which the kernels read there
    so that the host never waits for it; and GradScaler's found_inf the same way (nonzero: the call changes
    nothing, step counters included; NOTE [device steps])."""
    found_inf = None if found_inf is None else _one_float32_on(found_inf, "found_inf", params)
    if not isinstance(grad_factor, Tensor):
        return {"grad_factor": float(grad_factor), "device_grad_factor": None, "found_inf": found_inf}
    on_device = _one_float32_on(grad_factor, "grad_factor", params)
    return {"grad_factor": 1.0, "device_grad_factor": on_device, "found_inf": found_inf}


def _backend_for(backend: str | backends.Backend, params: Sequence[Tensor]) -> backends.Backend:
    if not isinstance(backend, str):
        return backend
    device = local_tensor(params[0]).device if params else torch.device("cpu")
    return backends.resolve(backend, device)


@torch.no_grad()
def adam(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    *,
    lr: PerGroup[float],
    beta1: PerGroup[float],
    beta2: PerGroup[float],
    weight_decay: PerGroup[float],
    eps: PerGroup[float],
    amsgrad: bool,
    maximize: PerGroup[bool],
    decoupled: PerGroup[bool],
    grad_factor: float | Tensor = 1.0,
    found_inf: Tensor | None = None,
    masters: Sequence[Tensor] = (),
    param_mode: int = 0,
    rounding_seed: int = 0,
    group_sizes: Sequence[int] | None = None,
    backend: str | backends.Backend = "auto",
) -> None:
    """Adam (decoupled=False) or AdamW (decoupled=True) on every tensor of the lists, in one fused pass."""
    hyperparameters = _per_group(
        params, group_sizes, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,
        maximize=maximize, decoupled=decoupled,
    )  # fmt: skip
    impl = _backend_for(backend, params)
    ops = _KernelOperands()
    impl.adam(
        ops.writable_list(params),
        ops.readable_list(grads),
        ops.writable_list(exp_avgs),
        ops.writable_list(exp_avg_sqs),
        ops.writable_list(max_exp_avg_sqs) if amsgrad else [],
        list(state_steps),
        **hyperparameters,
        amsgrad=amsgrad,
        **grad_factor_kwargs(grad_factor, params, found_inf),
        masters=ops.writable_list(masters),
        param_mode=param_mode,
        rounding_seed=rounding_seed,
    )
    ops.write_back()


@torch.no_grad()
def rmsprop(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    square_avgs: Sequence[Tensor],
    grad_avgs: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    *,
    lr: PerGroup[float],
    alpha: PerGroup[float],
    eps: PerGroup[float],
    weight_decay: PerGroup[float],
    momentum: PerGroup[float],
    centered: bool,
    maximize: PerGroup[bool],
    grad_factor: float | Tensor = 1.0,
    found_inf: Tensor | None = None,
    masters: Sequence[Tensor] = (),
    param_mode: int = 0,
    rounding_seed: int = 0,
    group_sizes: Sequence[int] | None = None,
    backend: str | backends.Backend = "auto",
) -> None:
    """RMSprop on every tensor of the lists, in one fused pass. With group_sizes, the groups must all use momentum
    (momentum > 0) or all not: that decides whether momentum_buffers are read."""
    hyperparameters = _per_group(
        params, group_sizes, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
        maximize=maximize,
    )  # fmt: skip
    use_momentum = {m > 0 for m in hyperparameters["momentum"]}
    if len(use_momentum) > 1:
        raise ValueError("param groups updated in one call must all have momentum > 0, or all momentum == 0")
    impl = _backend_for(backend, params)
    ops = _KernelOperands()
    impl.rmsprop(
        ops.writable_list(params),
        ops.readable_list(grads),
        ops.writable_list(square_avgs),
        ops.writable_list(grad_avgs) if centered else [],
        ops.writable_list(momentum_buffers) if True in use_momentum else [],
        list(state_steps),
        **hyperparameters,
        centered=centered,
        use_momentum=True in use_momentum,
        **grad_factor_kwargs(grad_factor, params, found_inf),
        masters=ops.writable_list(masters),
        param_mode=param_mode,
        rounding_seed=rounding_seed,
    )
    ops.write_back()


@torch.no_grad()
def adagrad(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    state_sums: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    *,
    lr: PerGroup[float],
    lr_decay: PerGroup[float],
    weight_decay: PerGroup[float],
    eps: PerGroup[float],
    maximize: PerGroup[bool],
    grad_factor: float | Tensor = 1.0,
    found_inf: Tensor | None = None,
    masters: Sequence[Tensor] = (),
    param_mode: int = 0,
    rounding_seed: int = 0,
    group_sizes: Sequence[int] | None = None,
    backend: str | backends.Backend = "auto",
) -> None:
    """Adagrad on every tensor of the lists, in one fused pass."""
    hyperparameters = _per_group(
        params, group_sizes, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize
    )
    impl = _backend_for(backend, params)
    ops = _KernelOperands()
    impl.adagrad(
        ops.writable_list(params),
        ops.readable_list(grads),
        ops.writable_list(state_sums),
        list(state_steps),
        **hyperparameters,
        **grad_factor_kwargs(grad_factor, params, found_inf),
        masters=ops.writable_list(masters),
        param_mode=param_mode,
        rounding_seed=rounding_seed,
    )
    ops.write_back()
