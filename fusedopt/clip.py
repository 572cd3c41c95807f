"""Gradient-norm clipping: `clip_grad_norm_`, and the total norm behind the optimizers' `max_grad_norm=` option.

`clip_grad_norm_` returns what torch.nn.utils.clip_grad_norm_ returns and scales the grads the same way, with one
multi-tensor norm per device and dtype. The optimizers' `max_grad_norm=` does better: it computes the same norm
but never rewrites a gradient; the clip coefficient is folded into the update pass (NOTE [grad factor] in
csrc/include/fusedopt/update_rules.h), so grads are read once for the norm and once by the step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from fusedopt import _extensions
from fusedopt._tensors import bucket_by_device_and_dtype

# torch.nn.utils.clip_grad_norm_'s guard against division by zero.
CLIP_EPSILON = 1e-6


def nonfinite_norm_message(norm_type: float) -> str:
    return (
        f"The total norm of order {float(norm_type)} for gradients from `parameters` is non-finite, so it cannot be "
        "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
        "`error_if_nonfinite=False`"
    )


def total_norm(grads: list[Tensor], norm_type: float = 2.0) -> Tensor:
    """The norm of all `grads` together, as torch.nn.utils.clip_grad_norm_ computes it: each grad's norm in its
    own dtype, then the norm of those. CPU grads of one dtype take one pass in C++ (NOTE [cpu norms]); anything
    else torch._foreach_norm per device and dtype."""
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    if device.type == "cpu":  # the common case in one call: CPU grads of one dtype (an empty one's norm is 0)
        norms = _cpu_norms(grads, norm_type)
        if norms is not None:
            return torch.linalg.vector_norm(norms.to(grads[0].dtype), norm_type)
    # An empty grad adds nothing to any norm (and has no infinity norm of its own).
    grouped = bucket_by_device_and_dtype([g for g in grads if g.numel()])
    if not grouped:
        return torch.zeros((), device=device)
    vectors, scalars = [], []
    for (group_device, dtype), tensors in grouped.items():
        norms = _cpu_norms(tensors, norm_type) if group_device.type == "cpu" else None
        if norms is not None:
            vectors.append(norms.to(dtype=dtype, device=device))
        else:
            scalars.extend(n.to(device) for n in torch._foreach_norm(tensors, norm_type))
    if scalars:
        vectors.append(torch.stack(scalars))
    return torch.linalg.vector_norm(vectors[0] if len(vectors) == 1 else torch.cat(vectors), norm_type)


# NOTE [cpu norms]: torch._foreach_norm on CPU tensors runs one reduction per tensor (it was most of a planned step
# with max_grad_norm=), while the CPU extension's tensor_norms reads every tensor of a dtype in one multi-threaded
# pass, accumulating in double (1,000 grads of four elements: 0.085 ms against 1.07 ms,
# bench/results/2026-11-29-cpu/cpu_norm.txt). Each norm is then rounded to its grad's dtype, as torch's are, so the
# total is torch's up to torch's own rounding (large float32 grads: fusedopt's is the float64 norm rounded, torch's
# float accumulation drifts). It is used when the extension is already built (never to start a JIT build) and the
# grads are plain, dense and contiguous; others go to torch.
def _cpu_norms(tensors: list[Tensor], norm_type: float) -> Tensor | None:
    if norm_type not in (2.0, math.inf):
        return None
    extension = _extensions.cpu_extension_if_built()
    return None if extension is None else extension.tensor_norms(tensors, float(norm_type))


def clip_coefficient(norm: Tensor, max_norm: float) -> Tensor:
    """min(1, max_norm / (norm + 1e-6)); NaN when the norm is NaN, as in torch."""
    return torch.clamp(max_norm / (norm + CLIP_EPSILON), max=1.0)


@torch.no_grad()
def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    """Clips the gradients' total norm to `max_norm` in place and returns the total norm (before clipping).

    Same arguments, result and errors as torch.nn.utils.clip_grad_norm_ (`foreach` is accepted and ignored:
    the norm is always a multi-tensor pass).
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = total_norm(grads, norm_type)
    if not grads:
        return norm
    if error_if_nonfinite and not torch.isfinite(norm):
        raise RuntimeError(nonfinite_norm_message(norm_type))
    coefficient = clip_coefficient(norm, float(max_norm))
    for (device, _), tensors in bucket_by_device_and_dtype(grads).items():
        torch._foreach_mul_(tensors, coefficient.to(device))
    return norm
