"""Adam/AdamW as one Triton launch for all param groups of a device and dtype (NOTE [multi-tensor launch] in
_launch.py).

`adam_update` mirrors fusedopt::adam_update of csrc/include/fusedopt/update_rules.h line for line, including
NOTE [folded bias correction]; tests/test_triton.py checks both against the same reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from fusedopt.triton_kernels import _launch as multi_tensor
from fusedopt.triton_kernels import _numerics as numerics
from fusedopt.triton_kernels import _param_modes as param_modes
from fusedopt.triton_kernels import _plan as plan

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
    m = numerics.lerp(m, g, beta1_complement)
    v = v * beta2 + beta2_complement * g * g
    second_moment = v
    if AMSGRAD:
        v_max = numerics.nan_max(v_max, v)
        second_moment = v_max
    p = p - step_size * numerics.ieee_div(m, numerics.ieee_sqrt(second_moment) + eps)
    return p, m, v, v_max


@triton.jit
def _adam_block(
    param, master, key, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, offsets, mask,
    grad_factor, l2_weight_decay, decay_factor, beta1_complement, beta2, beta2_complement, step_size, eps, decay_mode,
    COMPUTE: tl.constexpr, AMSGRAD: tl.constexpr, PARAM_MODE: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    p = param_modes.load_param(param, master, offsets, mask, MASKED, COMPUTE, PARAM_MODE)
    g = numerics.load(grad, offsets, mask, MASKED, COMPUTE)
    m = numerics.load(exp_avg, offsets, mask, MASKED, COMPUTE)
    v = numerics.load(exp_avg_sq, offsets, mask, MASKED, COMPUTE)
    v_max = v
    if AMSGRAD:
        v_max = numerics.load(max_exp_avg_sq, offsets, mask, MASKED, COMPUTE)
    p, m, v, v_max = adam_update(
        p, g, m, v, v_max, grad_factor, l2_weight_decay, decay_factor, beta1_complement, beta2, beta2_complement,
        step_size, eps, decay_mode, AMSGRAD,
    )  # fmt: skip
    param_modes.store_param(param, master, offsets, mask, p, key, MASKED, PARAM_MODE)
    numerics.store(exp_avg, offsets, mask, m, MASKED)
    numerics.store(exp_avg_sq, offsets, mask, v, MASKED)
    if AMSGRAD:
        numerics.store(max_exp_avg_sq, offsets, mask, v_max, MASKED)


@triton.jit(do_not_specialize=["num_tensors"])
def _adam_kernel(
    param_table, grad_table, exp_avg_table, exp_avg_sq_table, max_exp_avg_sq_table,  # int64 rows of addresses
    master_table,  # float32 masters or int16 remainders (PARAM_MODE 2, 3)
    step_table,  # float32 step counters (NOTE [device steps])
    numels, tensor_group, block_tensor, block_start,  # per tensor: size, group; per program: tensor, first element
    num_tensors, finished,  # NOTE [device steps]: the tensors whose counters advance; the ticket
    scalars,  # a float64 row per param group: multi_tensor.ROW_HEADER, then the group's hyperparameters
    grad_factor_scale,  # NOTE [grad factor]: the device part (SCALED), a float32 element
    found_inf,  # GradScaler's found_inf (FOUND_INF), a float32 element
    ROW: tl.constexpr, SCALED: tl.constexpr, FOUND_INF: tl.constexpr, PARAM: tl.constexpr, STATE: tl.constexpr,
    COMPUTE: tl.constexpr, AMSGRAD: tl.constexpr, PARAM_MODE: tl.constexpr, MASTER: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, param, master, grad, h, step, key, grad_factor, offsets, mask, full = multi_tensor.program_operands(
        param_table, grad_table, master_table, step_table, numels, tensor_group, block_tensor, block_start,
        scalars, grad_factor_scale, ROW, SCALED, COMPUTE, PARAM, MASTER, PARAM_MODE, ALIGNED, BLOCK,
    )  # fmt: skip
    runs = multi_tensor.step_runs(found_inf, FOUND_INF)
    if runs:
        exp_avg = multi_tensor.operand(exp_avg_table, t, STATE, ALIGNED)
        exp_avg_sq = multi_tensor.operand(exp_avg_sq_table, t, STATE, ALIGNED)
        max_exp_avg_sq = multi_tensor.operand(max_exp_avg_sq_table, t, STATE, ALIGNED)
        l2_weight_decay = tl.load(h).to(COMPUTE)
        decay_factor = tl.load(h + 1).to(COMPUTE)
        beta1_complement = tl.load(h + 2).to(COMPUTE)
        beta2 = tl.load(h + 3).to(COMPUTE)
        beta2_complement = tl.load(h + 4).to(COMPUTE)
        decay_mode = tl.load(h + 9).to(tl.int32)
        # fusedopt::scalars_at_step in float64: beta^step as exp(step * log(beta)), log(beta) from the host.
        bias_correction1 = 1.0 - tl.exp(step * tl.load(h + 7))
        bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp(step * tl.load(h + 8)))
        step_size = (tl.load(h + 5) * bias_correction2_sqrt / bias_correction1).to(COMPUTE)
        eps = (tl.load(h + 6) * bias_correction2_sqrt).to(COMPUTE)
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
    multi_tensor.finish_launch(step_table, num_tensors, finished, runs, BLOCK)


_ROW = multi_tensor.ROW_HEADER.value + 10  # entries of a scalars row


def _log(beta: float) -> float:
    return math.log(beta) if beta > 0 else -math.inf  # exp(step * -inf) = 0 = 0**step


def _group_row(lr, beta1, beta2, weight_decay, eps, maximize, decoupled, grad_factor) -> list[float]:
    """fusedopt::make_adam_hyper (csrc/include/fusedopt/update_rules.h): what fusedopt::scalars_at_step needs,
    as the kernel computes it, plus the weight decay mode."""
    mode = DECAY_NONE if weight_decay == 0 else (DECAY_DECOUPLED if decoupled else DECAY_L2)
    return [
        -grad_factor if maximize else grad_factor,
        weight_decay,
        1 - lr * weight_decay,
        1 - beta1,
        beta2,
        1 - beta2,
        lr,
        eps,
        _log(beta1),
        _log(beta2),
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
    found_inf: torch.Tensor | None,
    masters: Sequence[torch.Tensor],
    param_mode: int,
    rounding_seed: int,
) -> None:
    """One fused Adam/AdamW step over contiguous tensors on one device, of one or more param groups (the
    backends' signature; see fusedopt/functional.py)."""
    if not params:
        return
    columns = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    launch = multi_tensor.prepare(
        columns, state_steps, masters, param_mode, rounding_seed, group_sizes, device_grad_factor, found_inf
    )
    _run(launch, amsgrad, (lr, beta1, beta2, weight_decay, eps, maximize, decoupled), grad_factor)


def adam_planned(
    operands: plan.StepOperands,
    *,
    lr: list[float],
    beta1: list[float],
    beta2: list[float],
    weight_decay: list[float],
    eps: list[float],
    maximize: list[bool],
    decoupled: list[bool],
    amsgrad: bool,
    grad_factor: float,
    device_grad_factor: torch.Tensor | None,
    found_inf: torch.Tensor | None,
    rounding_seed: int,
) -> None:
    """adam over the operands of a step plan (NOTE [step plan]), after a successful operands.gather_grads()."""
    launch = operands.take(rounding_seed, device_grad_factor, found_inf)
    if launch is None:  # no planned parameter has a grad this step
        return
    _run(launch, amsgrad, (lr, beta1, beta2, weight_decay, eps, maximize, decoupled), grad_factor)


def _run(launch: multi_tensor.Launch, amsgrad: bool, hyper: tuple, grad_factor: float) -> None:
    scalars = launch.scalars([_group_row(*group, grad_factor) for group in zip(*hyper)])
    rows = launch.table.addresses
    multi_tensor.run_kernel(
        _adam_kernel, launch.table,
        launch.param_row, launch.grad_row, rows[2], rows[3], rows[4] if amsgrad else rows[3], launch.master_row,
        *launch.launch_args(scalars), ROW=_ROW, AMSGRAD=amsgrad, **launch.constexprs,
    )  # fmt: skip
