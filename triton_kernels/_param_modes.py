"""Parameter modes in the Triton kernels: plain, stochastically rounded bfloat16 (NOTE [stochastic rounding]), a
float32 master, and a bfloat16 parameter plus int16 remainder (NOTE [master remainder]). Mirrors
csrc/include/fusedopt/param_rounding.h and fusedopt/_rounding.py, bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusedopt.triton_kernels._numerics import load, store


@triton.jit
def mix32(x):
    """lowbias32 on int64 values holding uint32 numbers; products wrap and are masked back to 32 bits."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


@triton.jit
def rounding_block_key(key, first):
    """NOTE [stochastic rounding]: the hash of the upper 32 bits of the element index, the same for a program's
    whole block (its start `first` is a multiple of BLOCK, a power of two, so the block never straddles 2^32)."""
    return mix32((key + (first >> 32)) & 0xFFFFFFFF)


@triton.jit
def rounding_bits_in_block(block_key, index):
    """The random bits of element `index` (int64) of a block with `block_key` (fusedopt::rounding_bits_in_block)."""
    return mix32((index & 0xFFFFFFFF) ^ block_key)


@triton.jit
def rounding_key(seed_low, seed_high, step, t):
    """The key of tensor t at step `step` (fusedopt::rounding_key), from int64 values holding uint32 numbers."""
    inner = mix32((seed_high + mix32((step & 0xFFFFFFFF) ^ mix32(t & 0xFFFFFFFF))) & 0xFFFFFFFF)
    return mix32(seed_low ^ inner)


@triton.jit
def load_param(param, master, offsets, mask, MASKED: tl.constexpr, COMPUTE: tl.constexpr, PARAM_MODE: tl.constexpr):
    """The value being updated: the parameter, its float32 master, or master = param bits + int16 remainder."""
    if PARAM_MODE == 2:
        return load(master, offsets, mask, MASKED, tl.float32)
    elif PARAM_MODE == 3:
        high = load(param, offsets, mask, MASKED, tl.bfloat16).to(tl.uint16, bitcast=True).to(tl.int64)
        low = load(master, offsets, mask, MASKED, tl.int16).to(tl.int64)
        bits = ((high << 16) + low) & 0xFFFFFFFF
        return bits.to(tl.uint32).to(tl.float32, bitcast=True)
    else:
        return load(param, offsets, mask, MASKED, COMPUTE)


@triton.jit
def store_param(param, master, offsets, mask, value, block_key, MASKED: tl.constexpr, PARAM_MODE: tl.constexpr):
    if PARAM_MODE == 2:
        store(master, offsets, mask, value, MASKED)
        store(param, offsets, mask, value, MASKED)
    elif PARAM_MODE == 3:  # NOTE [master remainder]
        bits = value.to(tl.float32).to(tl.uint32, bitcast=True).to(tl.int64)
        high = ((bits >> 16) + ((bits >> 15) & 1)) & 0xFFFF
        high = tl.where(value != value, 0x7FC0, high)
        low = (bits & 0xFFFF).to(tl.uint16).to(tl.int16, bitcast=True)
        _store_raw(param, offsets, mask, high.to(tl.uint16).to(tl.bfloat16, bitcast=True), MASKED)
        _store_raw(master, offsets, mask, low, MASKED)
    elif PARAM_MODE == 1:  # NOTE [stochastic rounding]
        bits = value.to(tl.float32).to(tl.uint32, bitcast=True).to(tl.int64)
        rounded = (bits + (rounding_bits_in_block(block_key, offsets) & 0xFFFF)) >> 16
        rounded = tl.where(value != value, 0x7FC0, rounded)
        _store_raw(param, offsets, mask, rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True), MASKED)
    else:
        store(param, offsets, mask, value, MASKED)


@triton.jit
def _store_raw(pointer, offsets, mask, value, MASKED: tl.constexpr):
    if MASKED:
        tl.store(pointer + offsets, value, mask=mask)
    else:
        tl.store(pointer + offsets, value)


MASTER_DTYPES = {2: tl.float32, 3: tl.int16}
# The parameter dtypes each mode but the plain one (0) applies to, as in csrc/common/operands.h.
_MODE_PARAM_DTYPES = {1: (torch.bfloat16,), 2: (torch.bfloat16, torch.float16), 3: (torch.bfloat16,)}


def master_operands(params, masters, param_mode: int):
    """The master column of a launch (or none) and the master pointer type, after checking that the parameter mode
    applies to the params' dtype and has the masters it needs (and no others)."""
    if param_mode != 0 and params[0].dtype not in _MODE_PARAM_DTYPES.get(param_mode, ()):
        raise ValueError(
            f"fusedopt Triton backend: parameter mode {param_mode} does not apply to {params[0].dtype} parameters"
        )
    if param_mode not in MASTER_DTYPES and masters:
        raise ValueError(f"fusedopt Triton backend: parameter mode {param_mode} takes no masters, got {len(masters)}")
    if param_mode in MASTER_DTYPES:
        expected = torch.float32 if param_mode == 2 else torch.int16
        if len(masters) != len(params):
            raise ValueError(f"fusedopt Triton backend: {len(params)} params but {len(masters)} masters")
        for i, (p, m) in enumerate(zip(params, masters)):
            if m.dtype != expected or m.numel() != p.numel() or not m.is_contiguous() or m.device != p.device:
                raise ValueError(
                    f"fusedopt Triton backend: masters[{i}] must be a contiguous {expected} tensor like its param"
                )
        return [list(masters)], MASTER_DTYPES[param_mode]
    return [], tl.float32
