"""RMSprop as one Triton launch for all param groups of a device and dtype (NOTE [multi-tensor launch] in _launch.py).

`rmsprop_update` mirrors fusedopt::rmsprop_update of csrc/include/fusedopt/update_rules.h line for line.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from fusedopt.triton_kernels import _launch as multi_tensor
from fusedopt.triton_kernels import _numerics as numerics
from fusedopt.triton_kernels import _param_modes as param_modes
from fusedopt.triton_kernels import _plan as plan


@triton.jit
def rmsprop_update(
    p, g, square_avg, grad_avg, momentum_buffer,
    grad_factor, weight_decay, alpha, alpha_complement, eps, momentum, lr, decays,
    CENTERED: tl.constexpr, MOMENTUM: tl.constexpr,
):  # fmt: skip
    g = g * grad_factor
    if decays:  # a runtime value: groups with and without weight decay share a launch
        g = g + weight_decay * p
    square_avg = square_avg * alpha + alpha_complement * g * g
    if CENTERED:
        grad_avg = numerics.lerp(grad_avg, g, alpha_complement)
        avg = numerics.ieee_sqrt(square_avg - grad_avg * grad_avg)
    else:
        avg = numerics.ieee_sqrt(square_avg)
    avg = avg + eps
    if MOMENTUM:
        momentum_buffer = momentum_buffer * momentum + numerics.ieee_div(g, avg)
        p = p - lr * momentum_buffer
    else:
        p = p - lr * numerics.ieee_div(g, avg)
    return p, square_avg, grad_avg, momentum_buffer


@triton.jit
def _rmsprop_block(
    param, master, key, grad, square_avgs, grad_avgs, momentum_buffers, offsets, mask,
    grad_factor, weight_decay, alpha, alpha_complement, eps, momentum, lr, decays,
    COMPUTE: tl.constexpr, CENTERED: tl.constexpr, MOMENTUM: tl.constexpr, PARAM_MODE: tl.constexpr,
    MASKED: tl.constexpr,
):  # fmt: skip
    p = param_modes.load_param(param, master, offsets, mask, MASKED, COMPUTE, PARAM_MODE)
    g = numerics.load(grad, offsets, mask, MASKED, COMPUTE)
    square_avg = numerics.load(square_avgs, offsets, mask, MASKED, COMPUTE)
    grad_avg = square_avg
    momentum_buffer = square_avg
    if CENTERED:
        grad_avg = numerics.load(grad_avgs, offsets, mask, MASKED, COMPUTE)
    if MOMENTUM:
        momentum_buffer = numerics.load(momentum_buffers, offsets, mask, MASKED, COMPUTE)
    p, square_avg, grad_avg, momentum_buffer = rmsprop_update(
        p, g, square_avg, grad_avg, momentum_buffer, grad_factor, weight_decay, alpha, alpha_complement, eps,
        momentum, lr, decays, CENTERED, MOMENTUM,
    )  # fmt: skip
    param_modes.store_param(param, master, offsets, mask, p, key, MASKED, PARAM_MODE)
    numerics.store(square_avgs, offsets, mask, square_avg, MASKED)
    if CENTERED:
        numerics.store(grad_avgs, offsets, mask, grad_avg, MASKED)
    if MOMENTUM:
        numerics.store(momentum_buffers, offsets, mask, momentum_buffer, MASKED)


@triton.jit(do_not_specialize=["num_tensors"])
def _rmsprop_kernel(
    param_table, grad_table, square_avg_table, grad_avg_table, momentum_buffer_table,  # int64 address rows
    master_table,  # float32 masters or int16 remainders (PARAM_MODE 2, 3)
    step_table,  # float32 step counters (NOTE [device steps])
    numels, tensor_group, block_tensor, block_start,  # per tensor: size, group; per program: tensor, first element
    num_tensors, finished,  # NOTE [device steps]: the tensors whose counters advance; the ticket
    scalars,  # a float64 row per param group: multi_tensor.ROW_HEADER, then the group's hyperparameters
    grad_factor_scale,  # NOTE [grad factor]: the device part (SCALED), a float32 element
    found_inf,  # GradScaler's found_inf (FOUND_INF), a float32 element
    ROW: tl.constexpr, SCALED: tl.constexpr, FOUND_INF: tl.constexpr, PARAM: tl.constexpr, STATE: tl.constexpr,
    COMPUTE: tl.constexpr, CENTERED: tl.constexpr, MOMENTUM: tl.constexpr, PARAM_MODE: tl.constexpr,
    MASTER: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, param, master, grad, h, step, key, grad_factor, offsets, mask, full = multi_tensor.program_operands(
        param_table, grad_table, master_table, step_table, numels, tensor_group, block_tensor, block_start,
        scalars, grad_factor_scale, ROW, SCALED, COMPUTE, PARAM, MASTER, PARAM_MODE, ALIGNED, BLOCK,
    )  # fmt: skip
    runs = multi_tensor.step_runs(found_inf, FOUND_INF)
    if runs:
        square_avgs = multi_tensor.operand(square_avg_table, t, STATE, ALIGNED)
        grad_avgs = multi_tensor.operand(grad_avg_table, t, STATE, ALIGNED)
        momentum_buffers = multi_tensor.operand(momentum_buffer_table, t, STATE, ALIGNED)
        weight_decay = tl.load(h).to(COMPUTE)
        alpha = tl.load(h + 1).to(COMPUTE)
        alpha_complement = tl.load(h + 2).to(COMPUTE)
        eps = tl.load(h + 3).to(COMPUTE)
        momentum = tl.load(h + 4).to(COMPUTE)
        lr = tl.load(h + 5).to(COMPUTE)
        decays = tl.load(h + 6) != 0
        if full:
            _rmsprop_block(
                param, master, key, grad, square_avgs, grad_avgs, momentum_buffers, offsets, mask, grad_factor,
                weight_decay, alpha, alpha_complement, eps, momentum, lr, decays, COMPUTE, CENTERED, MOMENTUM,
                PARAM_MODE, False,
            )  # fmt: skip
        else:
            _rmsprop_block(
                param, master, key, grad, square_avgs, grad_avgs, momentum_buffers, offsets, mask, grad_factor,
                weight_decay, alpha, alpha_complement, eps, momentum, lr, decays, COMPUTE, CENTERED, MOMENTUM,
                PARAM_MODE, True,
            )  # fmt: skip
    multi_tensor.finish_launch(step_table, num_tensors, finished, runs, BLOCK)


_ROW = multi_tensor.ROW_HEADER.value + 7  # entries of a scalars row


def _group_row(lr, alpha, eps, weight_decay, momentum, maximize, grad_factor) -> list[float]:
    """fusedopt::make_rmsprop_hyper (csrc/include/fusedopt/update_rules.h), plus whether to decay."""
    grad_factor = -grad_factor if maximize else grad_factor
    return [grad_factor, weight_decay, alpha, 1 - alpha, eps, momentum, lr, float(weight_decay != 0)]


def rmsprop(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    square_avgs: Sequence[torch.Tensor],
    grad_avgs: Sequence[torch.Tensor],
    momentum_buffers: Sequence[torch.Tensor],
    state_steps: Sequence[torch.Tensor],
    *,
    lr: list[float],
    alpha: list[float],
    eps: list[float],
    weight_decay: list[float],
    momentum: list[float],
    maximize: list[bool],
    group_sizes: list[int],
    centered: bool,
    use_momentum: bool,
    grad_factor: float,
    device_grad_factor: torch.Tensor | None,
    found_inf: torch.Tensor | None,
    masters: Sequence[torch.Tensor],
    param_mode: int,
    rounding_seed: int,
) -> None:
    """One fused RMSprop step over contiguous tensors on one device, of one or more param groups (the backends'
    signature; see fusedopt/functional.py)."""
    if not params:
        return
    columns = (
        [params, grads, square_avgs] + ([grad_avgs] if centered else []) + ([momentum_buffers] if use_momentum else [])
    )
    launch = multi_tensor.prepare(
        columns, state_steps, masters, param_mode, rounding_seed, group_sizes, device_grad_factor, found_inf
    )
    _run(launch, centered, use_momentum, (lr, alpha, eps, weight_decay, momentum, maximize), grad_factor)


def rmsprop_planned(
    operands: plan.StepOperands,
    *,
    lr: list[float],
    alpha: list[float],
    eps: list[float],
    weight_decay: list[float],
    momentum: list[float],
    maximize: list[bool],
    centered: bool,
    grad_factor: float,
    device_grad_factor: torch.Tensor | None,
    found_inf: torch.Tensor | None,
    rounding_seed: int,
) -> None:
    """rmsprop over the operands of a step plan (NOTE [step plan]), after a successful operands.gather_grads();
    momentum is on when the plan's third state slot (momentum_buffers) is filled."""
    launch = operands.take(rounding_seed, device_grad_factor, found_inf)
    if launch is None:  # no planned parameter has a grad this step
        return
    hyper = (lr, alpha, eps, weight_decay, momentum, maximize)
    _run(launch, centered, operands.slots[2], hyper, grad_factor)


def _run(launch: multi_tensor.Launch, centered: bool, use_momentum: bool, hyper: tuple, grad_factor: float) -> None:
    scalars = launch.scalars([_group_row(*group, grad_factor) for group in zip(*hyper)])
    rows = list(launch.table.addresses)
    grad_avg_row = rows[3] if centered else rows[2]
    momentum_row = rows[3 + int(centered)] if use_momentum else rows[2]
    multi_tensor.run_kernel(
        _rmsprop_kernel, launch.table,
        launch.param_row, launch.grad_row, rows[2], grad_avg_row, momentum_row, launch.master_row,
        *launch.launch_args(scalars), ROW=_ROW, CENTERED=centered, MOMENTUM=use_momentum, **launch.constexprs,
    )  # fmt: skip
