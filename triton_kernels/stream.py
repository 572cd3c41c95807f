"""The benchmark's roofline in Triton: an optimizer step's loads and stores with one add per element, through
the same multi-tensor launch as the optimizers (NOTE [multi-tensor launch] in _common.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from fusedopt.triton_kernels import _common as common


@triton.jit
def _stream_block(param, grad, s0, s1, s2, offsets, mask, NUM_STATES: tl.constexpr, MASKED: tl.constexpr):
    g = common.load(grad, offsets, mask, MASKED, tl.float32)
    common.store(param, offsets, mask, common.load(param, offsets, mask, MASKED, tl.float32) + g, MASKED)
    if NUM_STATES > 0:
        common.store(s0, offsets, mask, common.load(s0, offsets, mask, MASKED, tl.float32) + g, MASKED)
    if NUM_STATES > 1:
        common.store(s1, offsets, mask, common.load(s1, offsets, mask, MASKED, tl.float32) + g, MASKED)
    if NUM_STATES > 2:
        common.store(s2, offsets, mask, common.load(s2, offsets, mask, MASKED, tl.float32) + g, MASKED)


@triton.jit
def _stream_kernel(
    param_table, grad_table, s0_table, s1_table, s2_table, numels, block_tensor, block_start,
    PARAM: tl.constexpr, STATE: tl.constexpr, NUM_STATES: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, start, numel = common.block_of_program(block_tensor, block_start, numels, BLOCK)
    param = common.operand(param_table, t, PARAM, ALIGNED)
    grad = common.operand(grad_table, t, PARAM, ALIGNED)
    s0 = common.operand(s0_table, t, STATE, ALIGNED)
    s1 = common.operand(s1_table, t, STATE, ALIGNED)
    s2 = common.operand(s2_table, t, STATE, ALIGNED)
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
    param_dtype, state_dtype = common.check_operands(params, *[c for i, c in enumerate(columns) if i != 1])
    table = common.launch_table(columns, params[0].device)
    rows = list(table.addresses)
    padded = rows[2:] + [rows[0]] * (3 - len(states))
    _stream_kernel[(table.num_blocks,)](
        rows[0], rows[1], *padded, table.numels, table.block_tensor, table.block_start,
        PARAM=common.TORCH_TO_TRITON[param_dtype], STATE=common.TORCH_TO_TRITON[state_dtype],
        NUM_STATES=len(states), ALIGNED=table.aligned, BLOCK=common.BLOCK, num_warps=common.NUM_WARPS,
    )  # fmt: skip
