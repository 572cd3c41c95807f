"""Adam/AdamW as one Triton launch for all param groups of a device and dtype (NOTE [multi-tensor launch] in
_common.py).

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

# Weight decay modes, as fusedopt::WeightDecayMode; each tensor's mode is the last entry of its scalars row.
DECAY_NONE, DECAY_L2, DECAY_DECOUPLED = 0, 1, 2


@triton.jit
def adam_update(
    p, g, m, v, v_max,
    grad_factor, l2_weight_decay, decay_factor, beta1_complement, beta2, beta2_complement, step_size, eps, decay_mode,
    AMSGRAD: tl.constexpr,
):  # fmt: skip
    g = g * grad_factor
    if decay_mode == 2:  # DECAY_DECOUPLED (a runtime value: groups with and without decay share a launch)
        p = p * decay_factor
    elif decay_mode == 1:  # DECAY_L2
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
    grad_factor, l2_weight_decay, decay_factor, beta1_complement, beta2, beta2_complement, step_size, eps, decay_mode,
    COMPUTE: tl.constexpr, AMSGRAD: tl.constexpr, PARAM_MODE: tl.constexpr, MASKED: tl.constexpr,
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
        step_size, eps, decay_mode, AMSGRAD,
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
    scalars,  # a row per tensor, in COMPUTE: its group's hyperparameters and its own bias corrections
    grad_factor_scale,  # NOTE [grad factor]: the device part (SCALED), a float32 element
    ROW: tl.constexpr, SCALED: tl.constexpr, PARAM: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr,
    AMSGRAD: tl.constexpr,
    PARAM_MODE: tl.constexpr, MASTER: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, param, master, key, grad, row, grad_factor, offsets, mask, full = common.program_operands(
        param_table, grad_table, master_table, keys, numels, block_tensor, block_start, scalars, grad_factor_scale,
        ROW, SCALED, PARAM, MASTER, ALIGNED, BLOCK,
    )  # fmt: skip
    exp_avg = common.operand(exp_avg_table, t, STATE, ALIGNED)
    exp_avg_sq = common.operand(exp_avg_sq_table, t, STATE, ALIGNED)
    max_exp_avg_sq = common.operand(max_exp_avg_sq_table, t, STATE, ALIGNED)
    l2_weight_decay = tl.load(row + 1)
    decay_factor = tl.load(row + 2)
    beta1_complement = tl.load(row + 3)
    beta2 = tl.load(row + 4)
    beta2_complement = tl.load(row + 5)
    step_size = tl.load(row + 6)
    eps = tl.load(row + 7)
    decay_mode = tl.load(row + 8).to(tl.int32)
    if full:
        _adam_block(
            param, master, key, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, offsets, mask, grad_factor,
            l2_weight_decay, decay_factor, beta1_complement, beta2, beta2_complement, step_size, eps, decay_mode,
            COMPUTE, AMSGRAD, PARAM_MODE, False,
        )  # fmt: skip
    else:
        _adam_block(
            param, master, key, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, offsets, mask, grad_factor,
            l2_weight_decay, decay_factor, beta1_complement, beta2, beta2_complement, step_size, eps, decay_mode,
            COMPUTE, AMSGRAD, PARAM_MODE, True,
        )  # fmt: skip


_ROW = 9  # entries of a scalars row


def _scalars_row(lr, beta1, beta2, weight_decay, eps, maximize, decoupled, step, grad_factor) -> list[float]:
    """fusedopt::make_adam_scalars (csrc/include/fusedopt/update_rules.h), plus the weight decay mode."""
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    mode = DECAY_NONE if weight_decay == 0 else (DECAY_DECOUPLED if decoupled else DECAY_L2)
    return [
        -grad_factor if maximize else grad_factor,
        weight_decay,
        1 - lr * weight_decay,
        1 - beta1,
        beta2,
        1 - beta2,
        lr * bias_correction2_sqrt / (1 - beta1**step),
        eps * bias_correction2_sqrt,
        float(mode),
    ]


def adam(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    max_exp_avg_sqs: Sequence[torch.Tensor],
    state_steps: Sequence[torch.Tensor],
    *,
    lr: list[float],
    beta1: list[float],
    beta2: list[float],
    weight_decay: list[float],
    eps: list[float],
    maximize: list[bool],
    decoupled: list[bool],
    group_sizes: list[int],
    amsgrad: bool,
    grad_factor: float,
    device_grad_factor: torch.Tensor | None,
    masters: Sequence[torch.Tensor],
    param_mode: int,
    rounding_seed: int,
) -> None:
    """One fused Adam/AdamW step over contiguous tensors on one device, of one or more param groups (the
    backends' signature; see fusedopt/functional.py)."""
    if not params:
        return
    columns = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    launch = common.prepare(columns, state_steps, masters, param_mode, rounding_seed, group_sizes, device_grad_factor)
    if launch.table.num_blocks == 0:
        return
    hyper = (lr, beta1, beta2, weight_decay, eps, maximize, decoupled)
    scalars = launch.per_tensor_scalars(
        lambda g, step: _scalars_row(*(values[g] for values in hyper), step, grad_factor)
    )
    rows = launch.table.addresses
    _adam_kernel[launch.grid](
        rows[0], rows[1], rows[2], rows[3], rows[4] if amsgrad else rows[3], rows[-1], launch.keys,
        *launch.table_args, scalars, launch.grad_factor_scale(scalars), ROW=_ROW, AMSGRAD=amsgrad,
        **launch.constexprs, num_warps=common.NUM_WARPS,
    )  # fmt: skip
