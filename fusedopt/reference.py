"""Eager PyTorch reference implementations: the numeric definition every fusedopt backend is tested against.

Written from the equations of torch.optim's documentation (and ../shared/docs/adaptive-optimizers.md), one
tensor at a time, for reading rather than speed. Each function has the functional signature every backend
implements (see fusedopt/functional.py): it advances the step counters and updates params and state in place.

Numerics shared by all backends:
- float32 and float64 tensors compute in their own dtype; bfloat16 and float16 tensors are loaded into float32,
  updated in float32 and rounded (to nearest even) once when stored, state included.
- Complex tensors are updated as their real and imaginary parts (torch.view_as_real), as torch.optim does.
- Per-step scalars (bias corrections, decayed learning rates) are Python floats, i.e. double precision.
- `param_mode` says what is updated and how the result is stored: the parameter rounded to nearest even, or
  rounded stochastically, or a float32 master (kept whole, or as an int16 remainder of a bfloat16 parameter)
  from which the parameter is rounded (fusedopt/_rounding.py, csrc/include/fusedopt/param_rounding.h).
- The stochastic rounding key of a tensor uses its index in the kernel launch: `first_tensor_index` plus its index
  in these lists (a launch may span several param groups, each handed to these functions separately).
- `grad_factor` multiplies every gradient as it is read: GradScaler's 1/scale and the max_grad_norm clip
  coefficient (NOTE [grad factor] in csrc/include/fusedopt/update_rules.h); gradients are never rewritten.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusedopt import _rounding

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _load(tensor: Tensor) -> Tensor:
    """The tensor as real numbers in its compute dtype (a new tensor or a read-only alias)."""
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    return tensor.float() if tensor.dtype in _LOW_PRECISION else tensor


def _store(destination: Tensor, value: Tensor) -> None:
    if destination.is_complex():
        destination = torch.view_as_real(destination)
    destination.copy_(value)


def _advance(step: Tensor) -> float:
    step += 1
    return float(step)


def _load_param(param: Tensor, master: Tensor | None, param_mode: int) -> Tensor:
    """The value being updated: the parameter, or its float32 master (fusedopt/_rounding.py)."""
    if param_mode == _rounding.MASTER:
        return master
    if param_mode == _rounding.REMAINDER:
        return _rounding.join_master(param, master)
    return _load(param)


def _store_param(param: Tensor, master: Tensor | None, value: Tensor, param_mode: int, key: int) -> None:
    if param_mode == _rounding.MASTER:
        master.copy_(value)
        _store(param, value)  # rounded to nearest even
    elif param_mode == _rounding.REMAINDER:
        rounded, remainder = _rounding.split_master(value)
        param.copy_(rounded)
        master.copy_(remainder)
    elif param_mode == _rounding.STOCHASTIC:
        param.copy_(
            _rounding.stochastic_round_to_bfloat16(value, _rounding.rounding_bits(key, value.numel(), value.device))
        )
    else:
        _store(param, value)


@torch.no_grad()
def adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
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
    masters: list[Tensor] = (),
    param_mode: int = _rounding.PLAIN,
    rounding_seed: int = 0,
    first_tensor_index: int = 0,
) -> None:
    """Adam (decoupled=False, L2 weight decay) and AdamW (decoupled=True)."""
    for i, param in enumerate(params):
        t = _advance(state_steps[i])
        master = masters[i] if masters else None
        theta, g, m, v = (
            _load_param(param, master, param_mode),
            _load(grads[i]),
            _load(exp_avgs[i]),
            _load(exp_avg_sqs[i]),
        )
        g = g * (-grad_factor if maximize else grad_factor)  # unscale, clip, maximize: NOTE [grad factor]
        if weight_decay != 0:
            if decoupled:
                theta = theta * (1 - lr * weight_decay)  # AdamW: shrink the weights directly
            else:
                g = g + weight_decay * theta  # Adam: L2 penalty, later scaled by the adaptive denominator
        m = torch.lerp(m, g, 1 - beta1)  # m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        v = v * beta2 + (1 - beta2) * g * g  # v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
        second_moment = v
        if amsgrad:
            second_moment = torch.maximum(_load(max_exp_avg_sqs[i]), v)
            _store(max_exp_avg_sqs[i], second_moment)
        # theta -= lr * m_hat / (sqrt(v_hat) + eps), with m_hat = m / (1 - beta1^t) and v_hat = v / (1 - beta2^t),
        # written as Kingma & Ba's "efficient version": both corrections folded into the step size and eps
        # (NOTE [folded bias correction] in csrc/include/fusedopt/update_rules.h).
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
        step_size = lr * bias_correction2_sqrt / (1 - beta1**t)
        theta = theta - step_size * (m / (second_moment.sqrt() + eps * bias_correction2_sqrt))
        _store_param(
            param, master, theta, param_mode, _rounding.rounding_key(rounding_seed, int(t), first_tensor_index + i)
        )
        _store(exp_avgs[i], m)
        _store(exp_avg_sqs[i], v)


@torch.no_grad()
def rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    grad_factor: float = 1.0,
    masters: list[Tensor] = (),
    param_mode: int = _rounding.PLAIN,
    rounding_seed: int = 0,
    first_tensor_index: int = 0,
) -> None:
    """RMSprop, optionally centered (divides by the gradient's variance estimate) and with momentum."""
    for i, param in enumerate(params):
        t = _advance(state_steps[i])
        master = masters[i] if masters else None
        theta, g, square_avg = _load_param(param, master, param_mode), _load(grads[i]), _load(square_avgs[i])
        g = g * (-grad_factor if maximize else grad_factor)  # unscale, clip, maximize: NOTE [grad factor]
        if weight_decay != 0:
            g = g + weight_decay * theta
        square_avg = square_avg * alpha + (1 - alpha) * g * g  # v_t = alpha * v_{t-1} + (1 - alpha) * g_t^2
        if centered:
            grad_avg = torch.lerp(_load(grad_avgs[i]), g, 1 - alpha)  # mean of g, for the variance v_t - mean^2
            avg = (square_avg - grad_avg * grad_avg).sqrt()
            _store(grad_avgs[i], grad_avg)
        else:
            avg = square_avg.sqrt()
        avg = avg + eps
        if momentum > 0:
            buffer = _load(momentum_buffers[i]) * momentum + g / avg
            theta = theta - lr * buffer
            _store(momentum_buffers[i], buffer)
        else:
            theta = theta - lr * (g / avg)
        _store_param(
            param, master, theta, param_mode, _rounding.rounding_key(rounding_seed, int(t), first_tensor_index + i)
        )
        _store(square_avgs[i], square_avg)


@torch.no_grad()
def adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    grad_factor: float = 1.0,
    masters: list[Tensor] = (),
    param_mode: int = _rounding.PLAIN,
    rounding_seed: int = 0,
    first_tensor_index: int = 0,
) -> None:
    """Adagrad: divides by the root of the running sum of squared gradients."""
    for i, param in enumerate(params):
        t = _advance(state_steps[i])
        master = masters[i] if masters else None
        theta, g, state_sum = _load_param(param, master, param_mode), _load(grads[i]), _load(state_sums[i])
        g = g * (-grad_factor if maximize else grad_factor)  # unscale, clip, maximize: NOTE [grad factor]
        if weight_decay != 0:
            g = g + weight_decay * theta
        clr = lr / (1 + (t - 1) * lr_decay)  # learning rate decayed with the step count
        state_sum = state_sum + g * g
        theta = theta - clr * (g / (state_sum.sqrt() + eps))
        _store_param(
            param, master, theta, param_mode, _rounding.rounding_key(rounding_seed, int(t), first_tensor_index + i)
        )
        _store(state_sums[i], state_sum)
