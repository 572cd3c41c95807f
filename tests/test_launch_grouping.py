"""One fused call per device, dtype and state layout, across param groups (NOTE [param groups in one launch] in
csrc/common/binding_utils.h): which groups share a call, that the shared call computes what separate calls
compute, and the functional API's group_sizes.

Calls are counted at the backend boundary (the kernel module's entry points, regular and planned); every backend
makes exactly one kernel launch per call (tests/test_triton.py and tests/test_cuda.py count the launches themselves).
"""

from __future__ import annotations

import pytest
import torch
from conftest import AVAILABLE_ON_CPU, EMULATED_CUDA
from helpers import FUSED_CLASSES, TORCH_CLASSES, assert_close_detailed, clone_params, make_params, run_steps

import fusedopt
from fusedopt import backends, functional

EXTENSION_BACKENDS = [b for b in AVAILABLE_ON_CPU if b in ("cpu", "triton")] + EMULATED_CUDA
pytestmark = pytest.mark.usefixtures("cuda_on_cpu")
SHAPES = [(7,), (33,), (5, 3), (1,), (100,), (2, 2)]


class CountingModule:
    """Stands in for a kernel module and records the group sizes of every optimizer call it forwards, regular or
    planned (NOTE [step plan]: a planned call's group sizes are those its StepOperands were made with)."""

    def __init__(self, module):
        self._module, self.calls, self._planned_sizes = module, [], {}

    def __getattr__(self, name):
        function = getattr(self._module, name)

        def call(*args, **kwargs):
            if name == "StepOperands":
                operands = function(*args, **kwargs)
                self._planned_sizes[id(operands)] = list(args[4])
                return operands
            if name.endswith("_planned"):
                self.calls.append((name, self._planned_sizes[id(args[0])]))
            elif name != "stream":
                self.calls.append((name, kwargs.get("group_sizes")))
            return function(*args, **kwargs)

        return call


@pytest.fixture(params=EXTENSION_BACKENDS)
def counted(request, monkeypatch):
    backend = backends.get_backend(request.param)
    counter = CountingModule(backend._extension())
    monkeypatch.setattr(backend, "_extension", lambda: counter)
    return request.param, counter


def _three_groups(params, **last):
    return [
        {"params": params[:2]},
        {"params": params[2:4], "weight_decay": 0.0, "lr": 3e-2},  # biases and norms: no decay
        {"params": params[4:], **last},
    ]


GROUP_CASES = {
    # name: (constructor kwargs, last group's settings, the groups each call updates)
    "AdamW decay, no decay, maximize": ("AdamW", {}, dict(maximize=True, betas=(0.8, 0.9)), [[0, 1, 2]]),
    "Adam L2 and none": ("Adam", dict(weight_decay=0.1), dict(eps=1e-6), [[0, 1, 2]]),
    "Adam amsgrad differs": ("Adam", {}, dict(amsgrad=True), [[0, 1], [2]]),
    "RMSprop momentum differs": ("RMSprop", dict(momentum=0.9), dict(momentum=0.0), [[0, 1], [2]]),
    "RMSprop centered differs": ("RMSprop", {}, dict(centered=True, alpha=0.9), [[0, 1], [2]]),
    "RMSprop alpha and momentum values": ("RMSprop", dict(momentum=0.5), dict(momentum=0.9, alpha=0.9), [[0, 1, 2]]),
    "Adagrad lr_decay differs": ("Adagrad", {}, dict(lr_decay=0.1, maximize=True), [[0, 1, 2]]),
    "AdamW state_dtype differs": ("AdamW", {}, dict(state_dtype=torch.bfloat16), [[0, 1], [2]]),
    "AdamW defaults given": ("AdamW", {}, dict(state_dtype=None, master_weights=False), [[0, 1, 2]]),
}


@pytest.mark.parametrize("case", GROUP_CASES, ids=list(GROUP_CASES))
def test_groups_share_a_call_when_their_state_layout_matches(case, counted, generator):
    """Groups that differ in lr, betas, eps, weight decay (including none), maximize, alpha, momentum values or
    lr_decay share one call; amsgrad, centered, momentum on/off and the state dtype change what the kernel
    reads, so they split it. Results match torch.optim with the same groups."""
    backend, counter = counted
    name, kwargs, last, expected_calls = GROUP_CASES[case]
    params = make_params(torch.float32, generator, SHAPES)
    twins = clone_params(params)
    groups = _three_groups(params, **last)
    fused = FUSED_CLASSES[name](groups, backend=backend, lr=1e-2, **kwargs)
    torch_last = {k: v for k, v in last.items() if k != "state_dtype"}
    reference = TORCH_CLASSES[name](_three_groups(twins, **torch_last), lr=1e-2, foreach=False, **kwargs)
    run_steps([(fused, params), (reference, twins)], 3, generator, skip_index=-1)
    sizes = [[len(groups[g]["params"]) for g in call] for call in expected_calls]
    assert [call_sizes for _, call_sizes in counter.calls] == sizes * 3
    tolerance = dict(rtol=2e-2, atol=1e-3) if "state_dtype" in last else {}
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_close_detailed(p, q, f"param {i}", **tolerance)


PARAM_MODE_CASES = {
    "master weights differ": dict(master_weights=True),
    "remainder differs": dict(master_weights="remainder"),
    "stochastic rounding differs": dict(stochastic_rounding=True),
}


@pytest.mark.parametrize("case", PARAM_MODE_CASES, ids=list(PARAM_MODE_CASES))
def test_groups_of_another_parameter_mode_take_their_own_call(case, counted, generator):
    """bfloat16 groups whose parameter mode differs (fusedopt/_rounding.py) split the call: the kernel reads
    masters, or rounds, for a whole call. Results match the reference with the same groups."""
    backend, counter = counted
    params = make_params(torch.bfloat16, generator, SHAPES)
    twins = clone_params(params)
    fused = fusedopt.AdamW(_three_groups(params, **PARAM_MODE_CASES[case]), backend=backend)
    reference = fusedopt.AdamW(_three_groups(twins, **PARAM_MODE_CASES[case]), backend="reference")
    run_steps([(fused, params), (reference, twins)], 3, generator, skip_index=-1)
    assert [call_sizes for _, call_sizes in counter.calls] == [[2, 2], [len(params) - 4]] * 3
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_close_detailed(p, q, f"param {i}")


def test_dtypes_and_parameters_without_grads(counted, generator):
    """float32 and bfloat16 parameters of the same groups take one call per dtype; a parameter without a grad
    this step is left out of its group's share."""
    backend, counter = counted
    f32 = make_params(torch.float32, generator, [(5,), (6,), (7,), (8,)])
    bf16 = make_params(torch.bfloat16, generator, [(9,), (10,)])
    groups = [{"params": [f32[0], bf16[0]]}, {"params": [f32[1], f32[2]], "weight_decay": 0.0},
              {"params": [f32[3], bf16[1]], "lr": 1e-1}]  # fmt: skip
    optimizer = fusedopt.AdamW(groups, backend=backend)
    for p in f32 + bf16:
        p.grad = torch.randn_like(p)
    f32[1].grad = None
    optimizer.step()
    assert sorted(sizes for _, sizes in counter.calls) == [[1, 1], [1, 1, 1]]


@pytest.mark.parametrize(
    "backend", ["cpu", "reference"] + [b for b in AVAILABLE_ON_CPU if b == "triton"] + EMULATED_CUDA
)
def test_functional_group_sizes_equal_separate_calls(backend, generator):
    """One call with group_sizes computes bit for bit what one call per group computes; an empty group between
    others shifts nothing (each tensor finds its own group's row of hyperparameters)."""
    params = [torch.randn(shape, generator=generator) for shape in SHAPES]
    grads = [torch.randn_like(p) for p in params]
    group_sizes = [3, 0, 1, 2]
    hyper = dict(lr=[1e-2, 5e-1, 3e-2, 2e-2], beta1=[0.9, 0.5, 0.8, 0.7], beta2=[0.999, 0.5, 0.95, 0.9],
                 weight_decay=[0.1, 0.7, 0.0, 0.2], eps=[1e-8, 1e-1, 1e-6, 1e-7],
                 maximize=[False, False, True, False], decoupled=[True, True, False, False])  # fmt: skip
    exp_avgs = [torch.rand(p.shape, generator=generator) for p in params]
    exp_avg_sqs = [torch.rand(p.shape, generator=generator) for p in params]
    runs = {}
    for how in ("together", "apart"):
        p, m, v = ([t.clone() for t in ts] for ts in ([t.detach() for t in params], exp_avgs, exp_avg_sqs))
        steps = [torch.tensor(float(i)) for i in range(len(params))]
        common = dict(amsgrad=False, backend=backend)
        if how == "together":
            functional.adam(p, grads, m, v, [], steps, group_sizes=group_sizes, **hyper, **common)
        else:
            first = 0
            for g, size in enumerate(group_sizes):
                part = slice(first, first + size)
                first += size
                if size:
                    functional.adam(
                        p[part], grads[part], m[part], v[part], [], steps[part],
                        **{k: values[g] for k, values in hyper.items()}, **common,
                    )  # fmt: skip
        runs[how] = (p, m, v, steps)
    for together, apart in zip(*(runs[how] for how in ("together", "apart"))):
        for a, b in zip(together, apart):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    "group_sizes, lr, message",
    [
        ([2, 2], [1e-2, 1e-2], "add up to the 6 params"),
        ([4, -1, 3], [1e-2] * 3, "non-negative"),
        ([4, 2], [1e-2], "lr must have one value per group"),
        ([4, 2], 1e-2, "lr must have one value per group"),
    ],
)
def test_functional_group_sizes_errors_change_nothing(group_sizes, lr, message, generator):
    params = [torch.randn(shape, generator=generator) for shape in SHAPES]
    before = [p.detach().clone() for p in params]
    steps = [torch.tensor(1.0) for _ in params]
    zeros = [torch.zeros_like(p) for p in params]
    per_group = lambda value: [value] * 2  # noqa: E731
    with pytest.raises(ValueError, match=message):
        functional.adagrad(
            params, [torch.randn_like(p) for p in params], zeros, steps, lr=lr, lr_decay=per_group(0.0),
            weight_decay=per_group(0.0), eps=per_group(1e-10), maximize=per_group(False), group_sizes=group_sizes,
            backend="cpu",
        )  # fmt: skip
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(float(s) == 1.0 for s in steps)


def test_functional_rmsprop_groups_must_agree_on_momentum(generator):
    params = [torch.randn(shape, generator=generator) for shape in SHAPES[:2]]
    ones = [torch.ones_like(p) for p in params]
    with pytest.raises(ValueError, match="momentum > 0, or all momentum == 0"):
        functional.rmsprop(
            params, ones, ones, [], ones, [torch.tensor(0.0)] * 2, lr=[1e-2] * 2, alpha=[0.99] * 2, eps=[1e-8] * 2,
            weight_decay=[0.0] * 2, momentum=[0.9, 0.0], centered=False, maximize=[False] * 2, group_sizes=[1, 1],
        )  # fmt: skip
