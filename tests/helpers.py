"""Shared test helpers: optimizer cases, awkward parameter sets, and comparisons that explain mismatches."""

from __future__ import annotations

import itertools
import socket

import torch

import fusedopt
from fusedopt import _rounding

# DTensor and FSDP2's fully_shard became public after torch 2.4, the oldest torch fusedopt supports.
try:
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor  # noqa: F401
except ImportError:  # torch 2.4
    from torch.distributed._tensor import DTensor, Shard, distribute_tensor  # noqa: F401


def fully_shard(*args, **kwargs):
    try:
        from torch.distributed.fsdp import fully_shard as fsdp2_fully_shard
    except ImportError:  # torch 2.4, 2.5
        from torch.distributed._composable.fsdp import fully_shard as fsdp2_fully_shard
    return fsdp2_fully_shard(*args, **kwargs)


TORCH_CLASSES = {
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "RMSprop": torch.optim.RMSprop,
    "Adagrad": torch.optim.Adagrad,
}
FUSED_CLASSES = {
    "Adam": fusedopt.Adam,
    "AdamW": fusedopt.AdamW,
    "RMSprop": fusedopt.RMSprop,
    "Adagrad": fusedopt.Adagrad,
}

# Every option combination the API has, per optimizer (lr chosen large enough that steps visibly move params).
OPTIMIZER_CASES = (
    [
        (name, dict(lr=1e-2, amsgrad=a, maximize=m, weight_decay=wd))
        for name in ("Adam", "AdamW")
        for a, m, wd in itertools.product((False, True), (False, True), (0.0, 0.1))
    ]
    + [
        (
            "RMSprop",
            dict(lr=1e-3, centered=c, momentum=mom, maximize=m, weight_decay=wd),
        )
        for c, mom, m, wd in itertools.product((False, True), (0.0, 0.9), (False, True), (0.0, 0.1))
    ]
    + [
        (
            "Adagrad",
            dict(lr=1e-2, lr_decay=ld, maximize=m, weight_decay=wd, initial_accumulator_value=iv),
        )
        for ld, m, wd, iv in itertools.product((0.0, 0.01), (False, True), (0.0, 0.1), (0.0, 0.1))
    ]
)


def cases_with_every_state(maximize: bool) -> list:
    """One OPTIMIZER_CASES case per optimizer with every state tensor it can have (amsgrad; RMSprop centered with
    momentum; Adagrad's lr_decay and initial accumulator) and weight decay on, maximize as asked."""
    return [
        c
        for c in OPTIMIZER_CASES
        if bool(c[1].get("maximize")) == maximize
        and c[1].get("weight_decay")
        and (c[1].get("amsgrad") or (c[1].get("centered") and c[1].get("momentum")) or c[1].get("lr_decay"))
        and c[1].get("initial_accumulator_value", 0.1)
    ]


def case_id(case) -> str:
    name, kwargs = case
    flags = ",".join(f"{k}={v}" for k, v in kwargs.items() if k != "lr")
    return f"{name}[{flags}]"


# Hyperparameters of a second param group, different from the first in every value that matters.
SECOND_GROUP = {
    "Adam": dict(lr=3e-3, betas=(0.8, 0.99), weight_decay=0.05),
    "AdamW": dict(lr=3e-3, betas=(0.8, 0.99), weight_decay=0.05),
    "RMSprop": dict(lr=2e-3, alpha=0.9, weight_decay=0.05),
    "Adagrad": dict(lr=5e-3, weight_decay=0.05),
}

# Sizes: empty, scalar, one element, primes that are no multiple of any vector width, a 3-D tensor, and one
# large enough to span several chunks and both OpenMP threads of the CPU kernel.
SHAPES = [(0,), (), (1,), (7,), (1023,), (1025,), (3, 5, 7), (131_075,)]


def make_params(dtype: torch.dtype, generator: torch.Generator, shapes=SHAPES) -> list[torch.Tensor]:
    """Random leaf parameters of awkward shapes, plus a non-contiguous (transposed) one."""
    params = [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in shapes]
    params.append(torch.randn(8, 6, generator=generator, dtype=torch.float64).to(dtype).t())
    return [torch.nn.Parameter(p) for p in params]


def clone_params(params: list[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    return [torch.nn.Parameter(strided_copy(p.detach(), dtype)) for p in params]


def random_grads(params, generator: torch.Generator, noncontiguous_index: int | None = None) -> list[torch.Tensor]:
    grads = []
    for i, p in enumerate(params):
        if i == noncontiguous_index and p.dim() == 1 and p.numel() > 1:
            # A strided view with the parameter's shape: every other element of a longer tensor.
            g = torch.randn(2 * p.numel(), generator=generator, dtype=torch.float64).to(p.device, p.dtype)[::2]
        else:
            g = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device, p.dtype)
        grads.append(g)
    return grads


def strided_copy(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A copy with the same shape and strides (clone() makes non-dense views contiguous)."""
    copy = torch.empty_strided(tensor.shape, tensor.stride(), dtype=dtype or tensor.dtype, device=tensor.device)
    return copy.copy_(tensor)


def assert_close_detailed(actual: torch.Tensor, expected: torch.Tensor, what: str, **tolerances) -> None:
    """assert_close (whose message gives the mismatch count and the worst element), plus NaN/inf counts."""
    try:
        torch.testing.assert_close(actual, expected, **tolerances)
    except AssertionError as error:
        a, e = actual.detach(), expected.detach()
        raise AssertionError(
            f"{what}: {error}\nnon-finite elements: actual {int((~torch.isfinite(a)).sum())}, "
            f"expected {int((~torch.isfinite(e)).sum())}"
        ) from None


def build_pair(name, kwargs, dtype, backend, generator, shapes=SHAPES):
    """A fusedopt optimizer and a torch.optim one (foreach=False) over identical params in two groups, with one
    parameter that never gets a gradient."""
    params = make_params(dtype, generator, shapes)
    twins = clone_params(params)
    half = len(params) // 2
    fused = FUSED_CLASSES[name](
        [{"params": params[:half]}, {"params": params[half:], **SECOND_GROUP[name]}], backend=backend, **kwargs
    )
    reference = TORCH_CLASSES[name](
        [{"params": twins[:half]}, {"params": twins[half:], **SECOND_GROUP[name]}], foreach=False, **kwargs
    )
    return fused, params, reference, twins


def run_steps(
    optimizers_and_params, steps: int, generator: torch.Generator, skip_index: int = 2, noncontiguous_index: int = 4
):
    """Steps every optimizer with the same random grads; parameter `skip_index` never has a grad, and parameter
    `noncontiguous_index` (None: none) gets strided ones."""
    for _ in range(steps):
        reference_params = optimizers_and_params[0][1]
        grads = random_grads(reference_params, generator, noncontiguous_index=noncontiguous_index)
        for optimizer, params in optimizers_and_params:
            for i, (p, g) in enumerate(zip(params, grads)):
                p.grad = None if i == skip_index else strided_copy(g, p.dtype)
            optimizer.step()


def assert_states_close(fused, reference, compare=assert_close_detailed) -> None:
    """The two optimizers' state_dicts hold the same keys, shapes, dtypes and (within tolerance) values; step
    counters equal counts, wherever each optimizer keeps them (NOTE [device steps])."""
    fused_state, reference_state = fused.state_dict()["state"], reference.state_dict()["state"]
    assert fused_state.keys() == reference_state.keys()
    for index, expected in reference_state.items():
        actual = fused_state[index]
        assert actual.keys() == expected.keys(), f"state of param {index}"
        for key, value in expected.items():
            assert actual[key].shape == value.shape and actual[key].dtype == value.dtype, f"state[{index}][{key}]"
            if key == "step":
                assert float(actual[key]) == float(value), f"state[{index}][step]"
            else:
                compare(actual[key], value, f"state[{index}][{key}]")


def free_port() -> int:
    """A TCP port free on this machine now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_regular_steps(optimizer) -> list:
    """A list that gets one entry per step `optimizer` takes on its regular path (not from its step plan)."""
    taken = []
    regular_path = type(optimizer)._plan_step
    optimizer._plan_step = lambda: taken.append(1) or regular_path(optimizer)
    return taken


# The head and tail check of NOTE [no contraction] (fusedopt/_build_config.py): more elements than a 512-bit vector of
# float32 and fewer than two, so the last ones span a vector and a scalar tail (or a masked block).
HEAD_AND_TAIL = 23


def step_with_equal_head_and_tail(name, kwargs, backend, dtype, generator, device="cpu") -> dict[str, torch.Tensor]:
    """Four steps of one parameter of 1,023 elements whose first HEAD_AND_TAIL values, and those of every grad,
    reappear as its last; returns the parameter and every state tensor, whose head and tail must then agree."""

    def with_head_as_tail(values: torch.Tensor) -> torch.Tensor:
        values[-HEAD_AND_TAIL:] = values[:HEAD_AND_TAIL]
        return values.to(device, dtype)

    param = torch.nn.Parameter(
        with_head_as_tail(torch.randn(1000 + HEAD_AND_TAIL, generator=generator, dtype=torch.float64))
    )
    optimizer = FUSED_CLASSES[name]([param], backend=backend, **kwargs)
    for _ in range(4):
        param.grad = with_head_as_tail(torch.randn(param.shape, generator=generator, dtype=torch.float64))
        optimizer.step()
    return {"param": param.detach(), **{k: v for k, v in optimizer.state[param].items() if k != "step"}}


def masters_of_both_modes(name, kwargs, params, backend, generator, steps: int) -> list[tuple]:
    """master_weights=True over bfloat16 `params` and master_weights="remainder" over their copies, stepped with the
    same grads and float32 state; (float32 master, the remainder mode's master, param, copy) for every param."""
    twins = clone_params(params)
    common = dict(backend=backend, state_dtype=torch.float32, **kwargs)
    master = FUSED_CLASSES[name](params, master_weights=True, **common)
    remainder = FUSED_CLASSES[name](twins, master_weights="remainder", **common)
    run_steps([(master, params), (remainder, twins)], steps, generator, skip_index=-1)
    return [
        (
            master.state[p]["master_param"],
            _rounding.join_master(q.detach(), remainder.state[q]["master_remainder"]),
            p,
            q,
        )
        for p, q in zip(params, twins)
    ]
