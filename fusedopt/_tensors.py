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
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover -- torch 2.4, or builds without torch.distributed
    try:
        from torch.distributed._tensor import DTensor, Replicate
    except ImportError:
        DTensor = Replicate = None

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


# NOTE [dtensor state offsets]: on torch 2.11, 2.13 and 2.14 (checked; 2.4.1 does not), a DTensor made from a local
# tensor that starts inside its storage (storage_offset > 0, as every state view but a bucket's first does) takes
# that offset into its own wrapper, which has no storage: torch.save, pickle and copy.deepcopy of it then fail
# ("invalid python storage"), so `torch.save(optimizer.state_dict())` would fail under FSDP2 where torch.optim's
# works. On such a torch each DTensor parameter's state gets a buffer of its own (offset 0); the kernels address
# each state tensor by its own pointer either way. Probed once, on the first DTensor parameter's device.
_DTENSOR_KEEPS_LOCAL_OFFSET: bool | None = None


def _dtensor_keeps_local_offset(param: Tensor) -> bool:
    global _DTENSOR_KEEPS_LOCAL_OFFSET
    if _DTENSOR_KEEPS_LOCAL_OFFSET is None:
        inner = torch.zeros(2, device=local_tensor(param).device)[1:]
        replicated = [Replicate()] * param.device_mesh.ndim
        probe = DTensor.from_local(inner, param.device_mesh, replicated, run_check=False)
        _DTENSOR_KEEPS_LOCAL_OFFSET = probe.storage_offset() != 0
    return _DTENSOR_KEEPS_LOCAL_OFFSET


def _real_numel(tensor: Tensor) -> int:
    return tensor.numel() * (2 if tensor.is_complex() else 1)


def state_views(
    params: Sequence[Tensor],
    fill: float,
    initial: Callable[[Tensor], Tensor | None] | None = None,
    dtype: torch.dtype | None = None,
) -> list[Tensor]:
    """One state tensor per parameter, all views into one new flat buffer (NOTE [flat state]; for DTensor
    parameters on some torch releases, one buffer each: NOTE [dtensor state offsets]).

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
    device = locals_[0].device
    if is_dtensor(params[0]) and _dtensor_keeps_local_offset(params[0]):  # NOTE [dtensor state offsets]
        pieces = [torch.full((_real_numel(local),), fill, dtype=real_dtype, device=device) for local in locals_]
    else:
        offsets, total = [], 0
        for local in locals_:
            offsets.append(total)
            total += -(-_real_numel(local) // align) * align
        flat = torch.full((total,), fill, dtype=real_dtype, device=device)
        pieces = [flat[offset : offset + _real_numel(local)] for local, offset in zip(locals_, offsets)]
    views = []
    for param, local, piece in zip(params, locals_, pieces):
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
