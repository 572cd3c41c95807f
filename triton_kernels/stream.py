"""The benchmark's roofline in Triton: an optimizer step's loads and stores with one add per element, through
the same multi-tensor launch as the optimizers (NOTE [multi-tensor launch] in _launch.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from fusedopt.triton_kernels import _launch as multi_tensor
from fusedopt.triton_kernels import _numerics as numerics


@triton.jit
def _stream_block(param, grad, s0, s1, s2, offsets, mask, NUM_STATES: tl.constexpr, MASKED: tl.constexpr):
    g = numerics.load(grad, offsets, mask, MASKED, tl.float32)
    numerics.store(param, offsets, mask, numerics.load(param, offsets, mask, MASKED, tl.float32) + g, MASKED)
    if NUM_STATES > 0:
        numerics.store(s0, offsets, mask, numerics.load(s0, offsets, mask, MASKED, tl.float32) + g, MASKED)
    if NUM_STATES > 1:
        numerics.store(s1, offsets, mask, numerics.load(s1, offsets, mask, MASKED, tl.float32) + g, MASKED)
    if NUM_STATES > 2:
        numerics.store(s2, offsets, mask, numerics.load(s2, offsets, mask, MASKED, tl.float32) + g, MASKED)


@triton.jit
def _stream_kernel(
    param_table, grad_table, s0_table, s1_table, s2_table, numels, block_tensor, block_start,
    PARAM: tl.constexpr, STATE: tl.constexpr, NUM_STATES: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, start, numel = multi_tensor.block_of_program(block_tensor, block_start, numels, BLOCK)
    param = multi_tensor.operand(param_table, t, PARAM, ALIGNED)
    grad = multi_tensor.operand(grad_table, t, PARAM, ALIGNED)
    s0 = multi_tensor.operand(s0_table, t, STATE, ALIGNED)
    s1 = multi_tensor.operand(s1_table, t, STATE, ALIGNED)
    s2 = multi_tensor.operand(s2_table, t, STATE, ALIGNED)
    offsets = start + tl.arange(0, BLOCK).to(tl.int64)
    mask = offsets < numel
    if start + BLOCK <= numel:
        _stream_block(param, grad, s0, s1, s2, offsets, mask, NUM_STATES, False)
    else:
        _stream_block(param, grad, s0, s1, s2, offsets, mask, NUM_STATES, True)


def stream(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], states: Sequence[Sequence[torch.Tensor]]):
    """Reads params, grads and every state list; writes params and states (up to three state lists)."""
    if not params:
        return
    columns = [params, grads, *states]
    param_dtype, state_dtype = multi_tensor.check_operands(params, grads, states)
    table = multi_tensor.launch_table(columns, params[0].device)
    rows = list(table.addresses)
    padded = rows[2:] + [rows[0]] * (3 - len(states))
    multi_tensor.run_kernel(
        _stream_kernel, table,
        rows[0], rows[1], *padded, table.numels, table.block_tensor, table.block_start,
        PARAM=numerics.TORCH_TO_TRITON[param_dtype], STATE=numerics.TORCH_TO_TRITON[state_dtype],
        NUM_STATES=len(states), ALIGNED=table.aligned, BLOCK=multi_tensor.BLOCK,
    )  # fmt: skip
