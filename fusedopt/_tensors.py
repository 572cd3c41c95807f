"""Tensor plumbing shared by the optimizers: DTensor shards, and flat per-bucket state buffers.

NOTE [flat state]: the state tensors of all parameters of one bucket (param group x device x dtype) are views
into one flat buffer per state name (one for every exp_avg, one for every exp_avg_sq, ...). The views have the
shapes and dtypes torch.optim would create, so state_dict() is interchangeable with torch.optim's; the flat
buffer keeps a bucket's state contiguous in memory and lets a GPU kernel address all of it from one base pointer.
Each parameter's slice starts on a 64-byte boundary, so every slice can be read with aligned vector loads.
Parameters themselves are never moved or rebound: the model, DDP and FSDP keep the tensors they own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

try:  # torch >= 2.5 moved DTensor to a public module
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover -- torch 2.4, or builds without torch.distributed
    try:
        from torch.distributed._tensor import DTensor
    except ImportError:
        DTensor = None

_ALIGN_BYTES = 64
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def is_dtensor(tensor: Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def is_plain(tensor: Tensor) -> bool:
    """A torch.Tensor or nn.Parameter itself, not a subclass (a DTensor, or one that dispatches to Python, may wrap no
    memory of its own, and its grad setter may run Python)."""
    return type(tensor) in _PLAIN_TYPES


def local_tensor(tensor: Tensor) -> Tensor:
    """The local shard of a DTensor (sharing its memory), or the tensor itself."""
    return tensor._local_tensor if is_dtensor(tensor) else tensor


def _like_param(param: Tensor, local_view: Tensor) -> Tensor:
    """Wraps a local state view as a DTensor laid out like `param` when `param` is one, as torch.optim's
    zeros_like(param) would."""
    if not is_dtensor(param):
        return local_view
    return DTensor.from_local(
        local_view, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def _real_numel(tensor: Tensor) -> int:
    return tensor.numel() * (2 if tensor.is_complex() else 1)


def state_views(
    params: Sequence[Tensor],
    fill: float,
    initial: Callable[[Tensor], Tensor | None] | None = None,
    dtype: torch.dtype | None = None,
) -> list[Tensor]:
    """One state tensor per parameter, all views into one new flat buffer (NOTE [flat state]).

    The params must share a device and dtype; the state has the params' dtype unless `dtype` says otherwise
    (state_dtype=). Each view is filled with `fill`, or, where `initial(param)` returns a tensor, with a copy of
    that tensor (used to adopt state loaded from a checkpoint).
    """
    locals_ = [local_tensor(p) for p in params]
    if not locals_:
        return []
    param_dtype = locals_[0].dtype
    real_dtype = param_dtype.to_real() if param_dtype.is_complex else (dtype or param_dtype)
    align = max(1, _ALIGN_BYTES // torch.empty((), dtype=real_dtype).element_size())
    offsets, total = [], 0
    for local in locals_:
        offsets.append(total)
        total += -(-_real_numel(local) // align) * align
    flat = torch.full((total,), fill, dtype=real_dtype, device=locals_[0].device)
    views = []
    for param, local, offset in zip(params, locals_, offsets):
        piece = flat[offset : offset + _real_numel(local)]
        view = torch.view_as_complex(piece.view(*local.shape, 2)) if local.is_complex() else piece.view(local.shape)
        source = initial(param) if initial is not None else None
        if source is not None:
            view.copy_(local_tensor(source))
        views.append(_like_param(param, view))
    return views


def bucket_by_device_and_dtype(params: Sequence[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[Tensor]]:
    buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in params:
        local = local_tensor(p)
        buckets.setdefault((local.device, local.dtype), []).append(p)
    return buckets
