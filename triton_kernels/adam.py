"""Adam/AdamW as one Triton launch per bucket (NOTE [multi-tensor launch] in _common.py).

`adam_update` mirrors fusedopt::adam_update of csrc/include/fusedopt/update_rules.h line for line, including
NOTE [folded bias correction]; tests/test_triton.py checks both against the same reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from fusedopt.triton_kernels import _common as common

# Weight decay modes, as fusedopt::WeightDecayMode.
DECAY_NONE, DECAY_L2, DECAY_DECOUPLED = 0, 1, 2


@triton.jit
def adam_update(
    p, g, m, v, v_max,
    grad_factor, l2_weight_decay, decay_factor, beta1_complement, beta2, beta2_complement, step_size, eps,
    DECAY_MODE: tl.constexpr, AMSGRAD: tl.constexpr,
):  # fmt: skip
    g = g * grad_factor
    if DECAY_MODE == 2:
        p = p * decay_factor
    elif DECAY_MODE == 1:
        g = g + l2_weight_decay * p
    m = common.lerp(m, g, beta1_complement)
    v = v * beta2 + beta2_complement * g * g
    second_moment = v
    if AMSGRAD:
        v_max = common.nan_max(v_max, v)
        second_moment = v_max
    p = p - step_size * common.ieee_div(m, common.ieee_sqrt(second_moment) + eps)
    return p, m, v, v_max


@triton.jit
def _adam_block(
    param, master, key, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, offsets, mask,
    grad_factor, l2_weight_decay, decay_factor, beta1_complement, beta2, beta2_complement, step_size, eps,
    COMPUTE: tl.constexpr, DECAY_MODE: tl.constexpr, AMSGRAD: tl.constexpr, PARAM_MODE: tl.constexpr,
    MASKED: tl.constexpr,
):  # fmt: skip
    p = common.load_param(param, master, offsets, mask, MASKED, COMPUTE, PARAM_MODE)
    g = common.load(grad, offsets, mask, MASKED, COMPUTE)
    m = common.load(exp_avg, offsets, mask, MASKED, COMPUTE)
    v = common.load(exp_avg_sq, offsets, mask, MASKED, COMPUTE)
    v_max = v
    if AMSGRAD:
        v_max = common.load(max_exp_avg_sq, offsets, mask, MASKED, COMPUTE)
    p, m, v, v_max = adam_update(
        p, g, m, v, v_max, grad_factor, l2_weight_decay, decay_factor, beta1_complement, beta2, beta2_complement,
        step_size, eps, DECAY_MODE, AMSGRAD,
    )  # fmt: skip
    common.store_param(param, master, offsets, mask, p, key, MASKED, PARAM_MODE)
    common.store(exp_avg, offsets, mask, m, MASKED)
    common.store(exp_avg_sq, offsets, mask, v, MASKED)
    if AMSGRAD:
        common.store(max_exp_avg_sq, offsets, mask, v_max, MASKED)


@triton.jit
def _adam_kernel(
    param_table, grad_table, exp_avg_table, exp_avg_sq_table, max_exp_avg_sq_table,  # int64 rows of addresses
    master_table,  # float32 masters or int16 remainders (PARAM_MODE 2, 3)
    keys,  # per-tensor stochastic rounding keys (PARAM_MODE 1)
    numels, block_tensor, block_start,  # tensor sizes; per program: its tensor and first element
    hyper,  # [grad_factor, l2_weight_decay, decay_factor, beta1_complement, beta2, beta2_complement] in COMPUTE
    per_tensor,  # [step_size, eps] per tensor, in COMPUTE (NOTE [folded bias correction])
    PARAM: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr,
    DECAY_MODE: tl.constexpr, AMSGRAD: tl.constexpr, PARAM_MODE: tl.constexpr, MASTER: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, start, numel = common.block_of_program(block_tensor, block_start, numels, BLOCK)
    param = common.operand(param_table, t, PARAM, ALIGNED)
    master = common.operand(master_table, t, MASTER, ALIGNED)
    key = tl.load(keys + t)
    grad = common.operand(grad_table, t, PARAM, ALIGNED)
    exp_avg = common.operand(exp_avg_table, t, STATE, ALIGNED)
    exp_avg_sq = common.operand(exp_avg_sq_table, t, STATE, ALIGNED)
    max_exp_avg_sq = common.operand(max_exp_avg_sq_table, t, STATE, ALIGNED)
    grad_factor = tl.load(hyper + 0)
    l2_weight_decay = tl.load(hyper + 1)
    decay_factor = tl.load(hyper + 2)
    beta1_complement = tl.load(hyper + 3)
    beta2 = tl.load(hyper + 4)
    beta2_complement = tl.load(hyper + 5)
    step_size = tl.load(per_tensor + 2 * t)
    eps = tl.load(per_tensor + 2 * t + 1)
    offsets = start + tl.arange(0, BLOCK).to(tl.int64)
    mask = offsets < numel
    if start + BLOCK <= numel:
        _adam_block(
            param, master, key, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, offsets, mask, grad_factor,
            l2_weight_decay, decay_factor, beta1_complement, beta2, beta2_complement, step_size, eps, COMPUTE,
            DECAY_MODE, AMSGRAD, PARAM_MODE, False,
        )  # fmt: skip
    else:
        _adam_block(
            param, master, key, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, offsets, mask, grad_factor,
            l2_weight_decay, decay_factor, beta1_complement, beta2, beta2_complement, step_size, eps, COMPUTE,
            DECAY_MODE, AMSGRAD, PARAM_MODE, True,
        )  # fmt: skip


def adam(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    max_exp_avg_sqs: Sequence[torch.Tensor],
    state_steps: Sequence[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled: bool,
    grad_factor: float = 1.0,
    masters: Sequence[torch.Tensor] = (),
    param_mode: int = 0,
    rounding_seed: int = 0,
) -> None:
    """One fused Adam/AdamW step over contiguous tensors on one device (the functional signature of
    fusedopt.reference.adam)."""
    if not params:
        return
    columns = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    launch = common.prepare(columns, state_steps, masters, param_mode, rounding_seed)
    if launch.table.num_blocks == 0:
        return
    per_tensor = []
    for t in launch.steps:
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
        per_tensor += [lr * bias_correction2_sqrt / (1 - beta1**t), eps * bias_correction2_sqrt]
    hyper = [
        -grad_factor if maximize else grad_factor,
        weight_decay,
        1 - lr * weight_decay,
        1 - beta1,
        beta2,
        1 - beta2,
    ]
    mode = DECAY_NONE if weight_decay == 0 else (DECAY_DECOUPLED if decoupled else DECAY_L2)
    rows = launch.table.addresses
    _adam_kernel[launch.grid](
        rows[0], rows[1], rows[2], rows[3], rows[4] if amsgrad else rows[3], rows[-1], launch.keys,
        *launch.table_args, launch.scalars(hyper), launch.scalars(per_tensor),
        DECAY_MODE=mode, AMSGRAD=amsgrad, **launch.constexprs, num_warps=common.NUM_WARPS,
    )  # fmt: skip
