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


def _interpreted() -> bool:
    """Whether @triton.jit made interpreted functions in this process (TRITON_INTERPRET=1 when it decorated them)."""
    return type(round_to_bfloat16).__name__ == "InterpretedFunction"


# NOTE [float32 subnormals]: Triton's tl.sqrt_rn and tl.div_rn round correctly, but Triton versions before
# triton-lang/triton#8557 (3.0 to 3.5.1; 3.6.0 is the first that does not) emit them as `sqrt.rn.ftz.f32` and
# `div.rn.ftz.f32`, which flush float32 subnormal inputs and results to zero; torch's kernels and fusedopt's CUDA and
# CPU kernels keep them. Compiled for an NVIDIA GPU, ieee_sqrt and ieee_div therefore state their PTX instruction
# themselves, the same one on every Triton version (scripts/ptx_checks.py refuses `.ftz`); the interpreter (numpy's
# IEEE float32) and AMD GPUs (no PTX) take Triton's own operations.
_PTX_WITHOUT_FLUSH = tl.constexpr(not _interpreted() and torch.version.hip is None)


@triton.jit
def ieee_sqrt(x):
    """Correctly rounded square root, as C++'s sqrt and torch's: Triton's tl.sqrt may be approximate in float32, and
    its tl.sqrt_rn may flush subnormals (NOTE [float32 subnormals])."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    elif _PTX_WITHOUT_FLUSH:
        return tl.inline_asm_elementwise("sqrt.rn.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def ieee_div(x, y):
    """Correctly rounded division: Triton's float32 `/` may be approximate, and its tl.div_rn may flush subnormals
    (NOTE [float32 subnormals])."""
    if x.dtype == tl.float64:
        return x / y
    elif _PTX_WITHOUT_FLUSH:
        return tl.inline_asm_elementwise(
            "div.rn.f32 $0, $1, $2;", "=f,f,f", [x, y], dtype=tl.float32, is_pure=True, pack=1
        )
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
