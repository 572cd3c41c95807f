"""Parameter modes and rounding in bits: the Python mirror of csrc/include/fusedopt/param_rounding.h.

Used by the eager reference (on tensors) and by the Triton host code (per-tensor keys), so that every backend
stores the same bits. See NOTE [stochastic rounding] and NOTE [master remainder] in that header.
"""

from __future__ import annotations

import torch
from torch import Tensor

# ParamMode, as the C++ enum.
PLAIN, STOCHASTIC, MASTER, REMAINDER = 0, 1, 2, 3
_MASK32 = 0xFFFFFFFF


def mix32(x):
    """lowbias32 on Python ints or int64 tensors holding uint32 values (wrapping uint32 arithmetic)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def rounding_key(seed: int, step: int, tensor_index: int) -> int:
    """The key of one tensor for one step (fusedopt::rounding_key)."""
    low, high = seed & _MASK32, (seed >> 32) & _MASK32
    inner = mix32((high + mix32((step & _MASK32) ^ mix32(tensor_index & _MASK32))) & _MASK32)
    return mix32(low ^ inner)


def rounding_bits(key: int, numel: int, device: torch.device) -> Tensor:
    """Random bits of elements 0..numel-1 of the tensor with `key` (fusedopt::rounding_bits_in_block of
    fusedopt::rounding_block_key), as int64."""
    index = torch.arange(numel, dtype=torch.int64, device=device)
    return mix32((index & _MASK32) ^ mix32((key + (index >> 32)) & _MASK32))


def _float_bits(value: Tensor) -> Tensor:
    return value.float().contiguous().view(torch.int32).to(torch.int64) & _MASK32


def _bfloat16_from_bits(bits16: Tensor) -> Tensor:
    return (bits16 & 0xFFFF).to(torch.int32).to(torch.int16).view(torch.bfloat16)


def stochastic_round_to_bfloat16(value: Tensor, random: Tensor) -> Tensor:
    """float32 -> bfloat16, rounding up with probability (dropped bits) / 2^16; NaN stays NaN."""
    bits = _float_bits(value).flatten()
    rounded = (bits + (random & 0xFFFF)) >> 16
    rounded = torch.where(value.flatten().isnan(), torch.full_like(rounded, 0x7FC0), rounded)
    return _bfloat16_from_bits(rounded).view(value.shape)


def split_master(value: Tensor) -> tuple[Tensor, Tensor]:
    """float32 -> (bfloat16 parameter rounded to nearest by carry, int16 remainder): NOTE [master remainder].
    A NaN gives the parameter the quiet NaN, whatever its bits (the carry could turn them into a zero)."""
    bits = _float_bits(value)
    param_bits = ((bits >> 16) + ((bits >> 15) & 1)) & 0xFFFF
    param_bits = torch.where(value.isnan(), torch.full_like(param_bits, 0x7FC0), param_bits)
    remainder = (bits & 0xFFFF).to(torch.int32).to(torch.int16)
    return _bfloat16_from_bits(param_bits), remainder


def join_master(param: Tensor, remainder: Tensor) -> Tensor:
    """The exact float32 master from the bfloat16 parameter and its int16 remainder (a NaN master joins to a NaN,
    not necessarily of the same bits)."""
    param_bits = param.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    bits = ((param_bits << 16) + remainder.to(torch.int64)) & _MASK32
    return bits.to(torch.int32).view(torch.float32)
