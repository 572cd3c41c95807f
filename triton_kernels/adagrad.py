"""Adagrad as one Triton launch for all param groups of a device and dtype (NOTE [multi-tensor launch] in _launch.py).

`adagrad_update` mirrors fusedopt::adagrad_update of csrc/include/fusedopt/update_rules.h line for line.
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
def adagrad_update(p, g, state_sum, grad_factor, weight_decay, clr, eps, decays):
    g = g * grad_factor
    if decays:  # a runtime value: groups with and without weight decay share a launch
        g = g + weight_decay * p
    state_sum = state_sum + g * g
    p = p - clr * numerics.ieee_div(g, numerics.ieee_sqrt(state_sum) + eps)
    return p, state_sum


@triton.jit
def _adagrad_block(
    param, master, key, grad, state_sums, offsets, mask, grad_factor, weight_decay, clr, eps, decays,
    COMPUTE: tl.constexpr, PARAM_MODE: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    p = param_modes.load_param(param, master, offsets, mask, MASKED, COMPUTE, PARAM_MODE)
    g = numerics.load(grad, offsets, mask, MASKED, COMPUTE)
    state_sum = numerics.load(state_sums, offsets, mask, MASKED, COMPUTE)
    p, state_sum = adagrad_update(p, g, state_sum, grad_factor, weight_decay, clr, eps, decays)
    param_modes.store_param(param, master, offsets, mask, p, key, MASKED, PARAM_MODE)
    numerics.store(state_sums, offsets, mask, state_sum, MASKED)


@triton.jit(do_not_specialize=["num_tensors"])
def _adagrad_kernel(
    param_table, grad_table, sum_table,  # int64 address rows
    master_table,  # float32 masters or int16 remainders (PARAM_MODE 2, 3)
    step_table,  # float32 step counters (NOTE [device steps])
    numels, tensor_group, block_tensor, block_start,  # per tensor: size, group; per program: tensor, first element
    num_tensors, finished,  # NOTE [device steps]: the tensors whose counters advance; the ticket
    scalars,  # a float64 row per param group: multi_tensor.ROW_HEADER, then the group's hyperparameters
    grad_factor_scale,  # NOTE [grad factor]: the device part (SCALED), a float32 element
    found_inf,  # GradScaler's found_inf (FOUND_INF), a float32 element
    ROW: tl.constexpr, SCALED: tl.constexpr, FOUND_INF: tl.constexpr, PARAM: tl.constexpr, STATE: tl.constexpr,
    COMPUTE: tl.constexpr, PARAM_MODE: tl.constexpr, MASTER: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    t, param, master, grad, h, step, key, grad_factor, offsets, mask, full = multi_tensor.program_operands(
        param_table, grad_table, master_table, step_table, numels, tensor_group, block_tensor, block_start,
        scalars, grad_factor_scale, ROW, SCALED, COMPUTE, PARAM, MASTER, PARAM_MODE, ALIGNED, BLOCK,
    )  # fmt: skip
    runs = multi_tensor.step_runs(found_inf, FOUND_INF)
    if runs:
        state_sums = multi_tensor.operand(sum_table, t, STATE, ALIGNED)
        weight_decay = tl.load(h).to(COMPUTE)
        # fusedopt::scalars_at_step in float64: the learning rate decayed with the step count.
        clr = (tl.load(h + 1) / (1.0 + (step - 1.0) * tl.load(h + 2))).to(COMPUTE)
        eps = tl.load(h + 3).to(COMPUTE)
        decays = tl.load(h + 4) != 0
        if full:
            _adagrad_block(param, master, key, grad, state_sums, offsets, mask, grad_factor, weight_decay, clr, eps,
                           decays, COMPUTE, PARAM_MODE, False)  # fmt: skip
        else:
            _adagrad_block(param, master, key, grad, state_sums, offsets, mask, grad_factor, weight_decay, clr, eps,
                           decays, COMPUTE, PARAM_MODE, True)  # fmt: skip
    multi_tensor.finish_launch(step_table, num_tensors, finished, runs, BLOCK)


_ROW = multi_tensor.ROW_HEADER.value + 5  # entries of a scalars row


def _group_row(lr, lr_decay, weight_decay, eps, maximize, grad_factor) -> list[float]:
    """fusedopt::make_adagrad_hyper (csrc/include/fusedopt/update_rules.h), plus whether to decay."""
    grad_factor = -grad_factor if maximize else grad_factor
    return [grad_factor, weight_decay, lr, lr_decay, eps, float(weight_decay != 0)]


def adagrad(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state_sums: Sequence[torch.Tensor],
    state_steps: Sequence[torch.Tensor],
    *,
    lr: list[float],
    lr_decay: list[float],
    weight_decay: list[float],
    eps: list[float],
    maximize: list[bool],
    group_sizes: list[int],
    grad_factor: float,
    device_grad_factor: torch.Tensor | None,
    found_inf: torch.Tensor | None,
    masters: Sequence[torch.Tensor],
    param_mode: int,
    rounding_seed: int,
) -> None:
    """One fused Adagrad step over contiguous tensors on one device, of one or more param groups (the backends'
    signature; see fusedopt/functional.py)."""
    if not params:
        return
    launch = multi_tensor.prepare(
        [params, grads, state_sums], state_steps, masters, param_mode, rounding_seed, group_sizes,
        device_grad_factor, found_inf,
    )  # fmt: skip
    _run(launch, (lr, lr_decay, weight_decay, eps, maximize), grad_factor)


def adagrad_planned(
    operands: plan.StepOperands,
    *,
    lr: list[float],
    lr_decay: list[float],
    weight_decay: list[float],
    eps: list[float],
    maximize: list[bool],
    grad_factor: float,
    device_grad_factor: torch.Tensor | None,
    found_inf: torch.Tensor | None,
    rounding_seed: int,
) -> None:
    """adagrad over the operands of a step plan (NOTE [step plan]), after a successful operands.gather_grads()."""
    launch = operands.take(rounding_seed, device_grad_factor, found_inf)
    if launch is None:  # no planned parameter has a grad this step
        return
    _run(launch, (lr, lr_decay, weight_decay, eps, maximize), grad_factor)


def _run(launch: multi_tensor.Launch, hyper: tuple, grad_factor: float) -> None:
    scalars = launch.scalars([_group_row(*group, grad_factor) for group in zip(*hyper)])
    rows = launch.table.addresses
    multi_tensor.run_kernel(
        _adagrad_kernel, launch.table,
        launch.param_row, launch.grad_row, rows[2], launch.master_row, *launch.launch_args(scalars), ROW=_ROW,
        **launch.constexprs,
    )  # fmt: skip
