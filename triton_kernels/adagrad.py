"""Adagrad as one Triton launch per bucket (NOTE [multi-tensor launch] in _common.py).

`adagrad_update` mirrors fusedopt::adagrad_update of csrc/include/fusedopt/update_rules.h line for line.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from fusedopt.triton_kernels import _common as common


@triton.jit
def adagrad_update(p, g, state_sum, grad_factor, weight_decay, clr, eps, WEIGHT_DECAY: tl.constexpr):
    g = g * grad_factor
    if WEIGHT_DECAY:
        g = g + weight_decay * p
    state_sum = state_sum + g * g
    p = p - clr * common.ieee_div(g, common.ieee_sqrt(state_sum) + eps)
    return p, state_sum


@triton.jit
def _adagrad_block(
    param, master, key, grad, state_sums, offsets, mask, grad_factor, weight_decay, clr, eps,
    COMPUTE: tl.constexpr, WEIGHT_DECAY: tl.constexpr, PARAM_MODE: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    p = common.load_param(param, master, offsets, mask, MASKED, COMPUTE, PARAM_MODE)
    g = common.load(grad, offsets, mask, MASKED, COMPUTE)
    state_sum = common.load(state_sums, offsets, mask, MASKED, COMPUTE)
    p, state_sum = adagrad_update(p, g, state_sum, grad_factor, weight_decay, clr, eps, WEIGHT_DECAY)
    common.store_param(param, master, offsets, mask, p, key, MASKED, PARAM_MODE)
    common.store(state_sums, offsets, mask, state_sum, MASKED)


@triton.jit
def _adagrad_kernel(
    param_table, grad_table, sum_table,  # int64 address rows
    master_table,  # float32 masters or int16 remainders (PARAM_MODE 2, 3)
    keys,  # per-tensor stochastic rounding keys (PARAM_MODE 1)
    numels, block_tensor, block_start,  # tensor sizes; per program: its tensor and first element
    hyper,  # [grad_factor, weight_decay, eps] in COMPUTE
    clrs,  # lr / (1 + (step - 1) * lr_decay) per tensor, in COMPUTE
    PARAM: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr, WEIGHT_DECAY: tl.constexpr,
    PARAM_MODE: tl.constexpr, MASTER: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, start, numel = common.block_of_program(block_tensor, block_start, numels, BLOCK)
    param = common.operand(param_table, t, PARAM, ALIGNED)
    master = common.operand(master_table, t, MASTER, ALIGNED)
    key = tl.load(keys + t)
    grad = common.operand(grad_table, t, PARAM, ALIGNED)
    state_sums = common.operand(sum_table, t, STATE, ALIGNED)
    grad_factor = tl.load(hyper + 0)
    weight_decay = tl.load(hyper + 1)
    eps = tl.load(hyper + 2)
    clr = tl.load(clrs + t)
    offsets = start + tl.arange(0, BLOCK).to(tl.int64)
    mask = offsets < numel
    if start + BLOCK <= numel:
        _adagrad_block(param, master, key, grad, state_sums, offsets, mask, grad_factor, weight_decay, clr, eps,
                       COMPUTE, WEIGHT_DECAY, PARAM_MODE, False)  # fmt: skip
    else:
        _adagrad_block(param, master, key, grad, state_sums, offsets, mask, grad_factor, weight_decay, clr, eps,
                       COMPUTE, WEIGHT_DECAY, PARAM_MODE, True)  # fmt: skip


def adagrad(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state_sums: Sequence[torch.Tensor],
    state_steps: Sequence[torch.Tensor],
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    grad_factor: float = 1.0,
    masters: Sequence[torch.Tensor] = (),
    param_mode: int = 0,
    rounding_seed: int = 0,
) -> None:
    """One fused Adagrad step (the functional signature of fusedopt.reference.adagrad)."""
    if not params:
        return
    launch = common.prepare([params, grads, state_sums], state_steps, masters, param_mode, rounding_seed)
    if launch.table.num_blocks == 0:
        return
    clrs = [lr / (1 + (t - 1) * lr_decay) for t in launch.steps]
    rows = launch.table.addresses
    _adagrad_kernel[launch.grid](
        rows[0], rows[1], rows[2], rows[-1], launch.keys, *launch.table_args,
        launch.scalars([-grad_factor if maximize else grad_factor, weight_decay, eps]), launch.scalars(clrs),
        WEIGHT_DECAY=weight_decay != 0, **launch.constexprs, num_warps=common.NUM_WARPS,
    )  # fmt: skip
