"""What the Triton kernels share about numbers: storage dtypes, loads that convert to the compute dtype, stores
that round back, and the correctly rounded and NaN-aware operations the update rules use (mirrors of
csrc/include/fusedopt/update_rules.h and host_storage.h).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

TORCH_TO_TRITON = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


def compute_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """float64 computes in float64; every other dtype in float32."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


@triton.jit
def round_to_bfloat16(x):
    """float32 -> bfloat16, round to nearest even, done in bits so the interpreter (which truncates) and the GPU
    agree; NaN stays a quiet NaN. The final cast is exact: the low 16 bits are already zero."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    rounded = tl.where(x != x, 0x7FC00000, rounded)
    return rounded.to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def to_storage(x, DTYPE: tl.constexpr):
    if DTYPE == tl.bfloat16:
        return round_to_bfloat16(x.to(tl.float32))
    else:
        return x.to(DTYPE)


@triton.jit
def ieee_sqrt(x):
    """Correctly rounded square root, as C++'s sqrt and torch's: Triton's tl.sqrt may be approximate in float32."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def ieee_div(x, y):
    """Correctly rounded division (Triton's float32 `/` may be approximate)."""
    if x.dtype == tl.float64:
        return x / y
    else:
        return tl.div_rn(x, y)


@triton.jit
def lerp(start, end, weight):
    """torch.lerp's formula, exact at both ends (mirrors fusedopt::lerp in update_rules.h)."""
    return tl.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1.0 - weight))


@triton.jit
def nan_max(a, b):
    """Maximum that propagates NaN like torch.maximum (mirrors fusedopt::max_of)."""
    return tl.where(a != a, a, tl.where(b != b, b, tl.maximum(a, b)))


@triton.jit
def load(pointer, offsets, mask, MASKED: tl.constexpr, COMPUTE: tl.constexpr):
    if MASKED:
        value = tl.load(pointer + offsets, mask=mask, other=0.0)
    else:
        value = tl.load(pointer + offsets)
    return value.to(COMPUTE)


@triton.jit
def store(pointer, offsets, mask, value, MASKED: tl.constexpr):
    value = to_storage(value, pointer.dtype.element_ty)
    if MASKED:
        tl.store(pointer + offsets, value, mask=mask)
    else:
        tl.store(pointer + offsets, value)
