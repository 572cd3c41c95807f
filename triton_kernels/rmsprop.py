"""RMSprop as one Triton launch per bucket (NOTE [multi-tensor launch] in _common.py).

`rmsprop_update` mirrors fusedopt::rmsprop_update of csrc/include/fusedopt/update_rules.h line for line.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from fusedopt.triton_kernels import _common as common


@triton.jit
def rmsprop_update(
    p, g, square_avg, grad_avg, momentum_buffer,
    grad_factor, weight_decay, alpha, alpha_complement, eps, momentum, lr,
    WEIGHT_DECAY: tl.constexpr, CENTERED: tl.constexpr, MOMENTUM: tl.constexpr,
):  # fmt: skip
    g = g * grad_factor
    if WEIGHT_DECAY:
        g = g + weight_decay * p
    square_avg = square_avg * alpha + alpha_complement * g * g
    if CENTERED:
        grad_avg = common.lerp(grad_avg, g, alpha_complement)
        avg = common.ieee_sqrt(square_avg - grad_avg * grad_avg)
    else:
        avg = common.ieee_sqrt(square_avg)
    avg = avg + eps
    if MOMENTUM:
        momentum_buffer = momentum_buffer * momentum + common.ieee_div(g, avg)
        p = p - lr * momentum_buffer
    else:
        p = p - lr * common.ieee_div(g, avg)
    return p, square_avg, grad_avg, momentum_buffer


@triton.jit
def _rmsprop_block(
    param, master, key, grad, square_avgs, grad_avgs, momentum_buffers, offsets, mask,
    grad_factor, weight_decay, alpha, alpha_complement, eps, momentum, lr,
    COMPUTE: tl.constexpr, WEIGHT_DECAY: tl.constexpr, CENTERED: tl.constexpr, MOMENTUM: tl.constexpr,
    PARAM_MODE: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    p = common.load_param(param, master, offsets, mask, MASKED, COMPUTE, PARAM_MODE)
    g = common.load(grad, offsets, mask, MASKED, COMPUTE)
    square_avg = common.load(square_avgs, offsets, mask, MASKED, COMPUTE)
    grad_avg = square_avg
    momentum_buffer = square_avg
    if CENTERED:
        grad_avg = common.load(grad_avgs, offsets, mask, MASKED, COMPUTE)
    if MOMENTUM:
        momentum_buffer = common.load(momentum_buffers, offsets, mask, MASKED, COMPUTE)
    p, square_avg, grad_avg, momentum_buffer = rmsprop_update(
        p, g, square_avg, grad_avg, momentum_buffer, grad_factor, weight_decay, alpha, alpha_complement, eps,
        momentum, lr, WEIGHT_DECAY, CENTERED, MOMENTUM,
    )  # fmt: skip
    common.store_param(param, master, offsets, mask, p, key, MASKED, PARAM_MODE)
    common.store(square_avgs, offsets, mask, square_avg, MASKED)
    if CENTERED:
        common.store(grad_avgs, offsets, mask, grad_avg, MASKED)
    if MOMENTUM:
        common.store(momentum_buffers, offsets, mask, momentum_buffer, MASKED)


@triton.jit
def _rmsprop_kernel(
    param_table, grad_table, square_avg_table, grad_avg_table, momentum_buffer_table,  # int64 address rows
    master_table,  # float32 masters or int16 remainders (PARAM_MODE 2, 3)
    keys,  # per-tensor stochastic rounding keys (PARAM_MODE 1)
    numels, block_tensor, block_start,  # tensor sizes; per program: its tensor and first element
    hyper,  # [grad_factor, weight_decay, alpha, 1 - alpha, eps, momentum, lr] in COMPUTE
    PARAM: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr, WEIGHT_DECAY: tl.constexpr,
    CENTERED: tl.constexpr, MOMENTUM: tl.constexpr, PARAM_MODE: tl.constexpr, MASTER: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, start, numel = common.block_of_program(block_tensor, block_start, numels, BLOCK)
    param = common.operand(param_table, t, PARAM, ALIGNED)
    master = common.operand(master_table, t, MASTER, ALIGNED)
    key = tl.load(keys + t)
    grad = common.operand(grad_table, t, PARAM, ALIGNED)
    square_avgs = common.operand(square_avg_table, t, STATE, ALIGNED)
    grad_avgs = common.operand(grad_avg_table, t, STATE, ALIGNED)
    momentum_buffers = common.operand(momentum_buffer_table, t, STATE, ALIGNED)
    grad_factor = tl.load(hyper + 0)
    weight_decay = tl.load(hyper + 1)
    alpha = tl.load(hyper + 2)
    alpha_complement = tl.load(hyper + 3)
    eps = tl.load(hyper + 4)
    momentum = tl.load(hyper + 5)
    lr = tl.load(hyper + 6)
    offsets = start + tl.arange(0, BLOCK).to(tl.int64)
    mask = offsets < numel
    if start + BLOCK <= numel:
        _rmsprop_block(
            param, master, key, grad, square_avgs, grad_avgs, momentum_buffers, offsets, mask, grad_factor,
            weight_decay, alpha, alpha_complement, eps, momentum, lr, COMPUTE, WEIGHT_DECAY, CENTERED, MOMENTUM,
            PARAM_MODE, False,
        )  # fmt: skip
    else:
        _rmsprop_block(
            param, master, key, grad, square_avgs, grad_avgs, momentum_buffers, offsets, mask, grad_factor,
            weight_decay, alpha, alpha_complement, eps, momentum, lr, COMPUTE, WEIGHT_DECAY, CENTERED, MOMENTUM,
            PARAM_MODE, True,
        )  # fmt: skip


def rmsprop(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    square_avgs: Sequence[torch.Tensor],
    grad_avgs: Sequence[torch.Tensor],
    momentum_buffers: Sequence[torch.Tensor],
    state_steps: Sequence[torch.Tensor],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    grad_factor: float = 1.0,
    masters: Sequence[torch.Tensor] = (),
    param_mode: int = 0,
    rounding_seed: int = 0,
) -> None:
    """One fused RMSprop step (the functional signature of fusedopt.reference.rmsprop)."""
    if not params:
        return
    columns = (
        [params, grads, square_avgs] + ([grad_avgs] if centered else []) + ([momentum_buffers] if momentum > 0 else [])
    )
    param_dtype, state_dtype = common.check_operands(params, *[c for i, c in enumerate(columns) if i != 1])
    steps = common.advance_steps(state_steps)
    device, compute = params[0].device, common.compute_dtype(param_dtype)
    master_columns, keys, master_dtype = common.param_mode_operands(
        params, masters, param_mode, steps, rounding_seed, device
    )
    table = common.launch_table(columns + master_columns, device)
    if table.num_blocks == 0:
        return
    hyper = [(-grad_factor if maximize else grad_factor), weight_decay, alpha, 1 - alpha, eps, momentum, lr]
    rows = list(table.addresses)
    grad_avg_row = rows[3] if centered else rows[2]
    momentum_row = rows[2 + int(centered) + 1] if momentum > 0 else rows[2]
    _rmsprop_kernel[(table.num_blocks,)](
        rows[0], rows[1], rows[2], grad_avg_row, momentum_row, rows[-1], keys,
        table.numels, table.block_tensor, table.block_start,
        common.scalars_tensor(hyper, compute, device),
        PARAM=common.TORCH_TO_TRITON[param_dtype], STATE=common.TORCH_TO_TRITON[state_dtype],
        COMPUTE=common.TORCH_TO_TRITON[compute], WEIGHT_DECAY=weight_decay != 0, CENTERED=centered,
        MOMENTUM=momentum > 0, PARAM_MODE=param_mode, MASTER=master_dtype, ALIGNED=table.aligned,
        BLOCK=common.BLOCK, num_warps=common.NUM_WARPS,
    )  # fmt: skip
