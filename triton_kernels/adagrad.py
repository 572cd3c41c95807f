"""Adagrad as one Triton launch for all param groups of a device and dtype (NOTE [multi-tensor launch] in _common.py).

`adagrad_update` mirrors fusedopt::adagrad_update of csrc/include/fusedopt/update_rules.h line for line.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from fusedopt.triton_kernels import _common as common


@triton.jit
def adagrad_update(p, g, state_sum, grad_factor, weight_decay, clr, eps, decays):
    g = g * grad_factor
    if decays:  # a runtime value: groups with and without weight decay share a launch
        g = g + weight_decay * p
    state_sum = state_sum + g * g
    p = p - clr * common.ieee_div(g, common.ieee_sqrt(state_sum) + eps)
    return p, state_sum


@triton.jit
def _adagrad_block(
    param, master, key, grad, state_sums, offsets, mask, grad_factor, weight_decay, clr, eps, decays,
    COMPUTE: tl.constexpr, PARAM_MODE: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    p = common.load_param(param, master, offsets, mask, MASKED, COMPUTE, PARAM_MODE)
    g = common.load(grad, offsets, mask, MASKED, COMPUTE)
    state_sum = common.load(state_sums, offsets, mask, MASKED, COMPUTE)
    p, state_sum = adagrad_update(p, g, state_sum, grad_factor, weight_decay, clr, eps, decays)
    common.store_param(param, master, offsets, mask, p, key, MASKED, PARAM_MODE)
    common.store(state_sums, offsets, mask, state_sum, MASKED)


@triton.jit
def _adagrad_kernel(
    param_table, grad_table, sum_table,  # int64 address rows
    master_table,  # float32 masters or int16 remainders (PARAM_MODE 2, 3)
    keys,  # per-tensor stochastic rounding keys (PARAM_MODE 1)
    numels, block_tensor, block_start,  # tensor sizes; per program: its tensor and first element
    scalars,  # a row per tensor, in COMPUTE: its group's hyperparameters and its decayed lr
    grad_factor_scale,  # NOTE [grad factor]: the device part (SCALED), a float32 element
    ROW: tl.constexpr, SCALED: tl.constexpr, PARAM: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr,
    PARAM_MODE: tl.constexpr,
    MASTER: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    t, param, master, key, grad, row, grad_factor, offsets, mask, full = common.program_operands(
        param_table, grad_table, master_table, keys, numels, block_tensor, block_start, scalars, grad_factor_scale,
        ROW, SCALED, PARAM, MASTER, ALIGNED, BLOCK,
    )  # fmt: skip
    state_sums = common.operand(sum_table, t, STATE, ALIGNED)
    weight_decay = tl.load(row + 1)
    clr = tl.load(row + 2)
    eps = tl.load(row + 3)
    decays = tl.load(row + 4) != 0
    if full:
        _adagrad_block(param, master, key, grad, state_sums, offsets, mask, grad_factor, weight_decay, clr, eps,
                       decays, COMPUTE, PARAM_MODE, False)  # fmt: skip
    else:
        _adagrad_block(param, master, key, grad, state_sums, offsets, mask, grad_factor, weight_decay, clr, eps,
                       decays, COMPUTE, PARAM_MODE, True)  # fmt: skip


_ROW = 5  # entries of a scalars row


def _scalars_row(lr, lr_decay, weight_decay, eps, maximize, step, grad_factor) -> list[float]:
    """fusedopt::make_adagrad_scalars (csrc/include/fusedopt/update_rules.h), plus whether to decay."""
    grad_factor = -grad_factor if maximize else grad_factor
    return [grad_factor, weight_decay, lr / (1 + (step - 1) * lr_decay), eps, float(weight_decay != 0)]


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
    masters: Sequence[torch.Tensor],
    param_mode: int,
    rounding_seed: int,
) -> None:
    """One fused Adagrad step over contiguous tensors on one device, of one or more param groups (the backends'
    signature; see fusedopt/functional.py)."""
    if not params:
        return
    columns = [params, grads, state_sums]
    launch = common.prepare(columns, state_steps, masters, param_mode, rounding_seed, group_sizes, device_grad_factor)
    if launch.table.num_blocks == 0:
        return
    hyper = (lr, lr_decay, weight_decay, eps, maximize)
    scalars = launch.per_tensor_scalars(
        lambda g, step: _scalars_row(*(values[g] for values in hyper), step, grad_factor)
    )
    rows = launch.table.addresses
    _adagrad_kernel[launch.grid](
        rows[0], rows[1], rows[2], rows[-1], launch.keys, *launch.table_args, scalars,
        launch.grad_factor_scale(scalars), ROW=_ROW,
        **launch.constexprs, num_warps=common.NUM_WARPS,
    )  # fmt: skip
