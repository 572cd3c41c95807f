"""The functional API's fused backends refuse operands that break the kernels' contract, before anything changes.

The optimizer classes check parameters and grads in torch.optim's words before a backend sees them
(tests/test_validation.py); fusedopt.functional hands its lists to the backend as they are, so each fused backend
checks them itself (csrc/common/operands.h for cpu and cuda, triton_kernels/_launch.py for triton): a grad or state
of another dtype or size would otherwise be read as something it is not, or past its end.
"""

from __future__ import annotations

import pytest
import torch
from conftest import AVAILABLE_ON_CPU, CPU_BACKENDS, EMULATED_CUDA

from fusedopt import functional

BACKENDS = (
    [b for b in CPU_BACKENDS if b != "reference"] + [b for b in AVAILABLE_ON_CPU if b == "triton"] + EMULATED_CUDA
)
pytestmark = pytest.mark.usefixtures("cuda_on_cpu")


def _operands(generator):
    """Two float32 params of 7 and 70 elements with grads, Adam state and step counters (all random, not zeros)."""
    make = lambda n: torch.randn(n, generator=generator)  # noqa: E731
    sizes = (7, 70)
    return {
        "params": [make(n) for n in sizes],
        "grads": [make(n) for n in sizes],
        "exp_avgs": [make(n) for n in sizes],
        "exp_avg_sqs": [make(n).abs() for n in sizes],
        "steps": [torch.full((1,), 3.0) for _ in sizes],
        "masters": [],
        "param_mode": 0,
    }


def _bf16_params(ops):
    ops["params"] = [p.bfloat16() for p in ops["params"]]
    ops["grads"] = [g.bfloat16() for g in ops["grads"]]


BAD_OPERANDS = {
    # name: (how the operands are spoiled, what the message names)
    "grad of another dtype": (
        lambda ops: ops["grads"].__setitem__(0, ops["grads"][0].double()),
        r"grads\[0\] has dtype",
    ),
    "grad of fewer elements": (lambda ops: ops["grads"].__setitem__(1, ops["grads"][1][:5]), r"grads\[1\]"),
    "fewer grads than params": (lambda ops: ops["grads"].pop(), r"2 params but 1 grads"),
    "more state tensors than params": (lambda ops: ops["exp_avgs"].append(ops["exp_avgs"][0]), r"2 params but 3"),
    "state of fewer elements": (lambda ops: ops["exp_avg_sqs"].__setitem__(1, ops["exp_avg_sqs"][1][:69]), r"state"),
    "states of two dtypes": (
        lambda ops: ops["exp_avg_sqs"].__setitem__(0, ops["exp_avg_sqs"][0].bfloat16()),
        r"state.* has dtype",
    ),
    "params of two dtypes": (lambda ops: ops["params"].__setitem__(1, ops["params"][1].double()), r"params\[1\]"),
    "step counter of two elements": (
        lambda ops: ops["steps"].__setitem__(0, torch.zeros(2)),
        r"steps\[0\] must be a one-element",
    ),
    "stochastic rounding of float32 params": (
        lambda ops: ops.update(param_mode=1),
        r"parameter mode 1 does not apply to .*float32",
    ),
    "master mode without masters": (lambda ops: _bf16_params(ops) or ops.update(param_mode=2), r"master"),
}


@pytest.mark.parametrize("case", BAD_OPERANDS, ids=list(BAD_OPERANDS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_operands_are_refused_before_anything_changes(backend, case, generator):
    spoil, message = BAD_OPERANDS[case]
    ops = _operands(generator)
    spoil(ops)
    before = {name: [t.clone() for t in ops[name]] for name in ("params", "exp_avgs", "exp_avg_sqs", "steps")}
    with pytest.raises((TypeError, ValueError, RuntimeError), match=message):
        functional.adam(
            ops["params"], ops["grads"], ops["exp_avgs"], ops["exp_avg_sqs"], [], ops["steps"], lr=0.1, beta1=0.9,
            beta2=0.99, weight_decay=0.1, eps=1e-8, amsgrad=False, maximize=False, decoupled=True,
            masters=ops["masters"], param_mode=ops["param_mode"], backend=backend,
        )  # fmt: skip
    for name, tensors in before.items():
        for index, (now, then) in enumerate(zip(ops[name], tensors)):
            assert torch.equal(now, then), f"{name}[{index}] changed"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_unspoiled_operands_step(backend, generator):
    """The operands the cases above spoil are good as they are: the step runs and moves every param."""
    ops = _operands(generator)
    before = [p.clone() for p in ops["params"]]
    functional.adam(
        ops["params"], ops["grads"], ops["exp_avgs"], ops["exp_avg_sqs"], [], ops["steps"], lr=0.1, beta1=0.9,
        beta2=0.99, weight_decay=0.1, eps=1e-8, amsgrad=False, maximize=False, decoupled=True, backend=backend,
    )  # fmt: skip
    assert all(not torch.equal(p, q) for p, q in zip(ops["params"], before))


def _mixed_operands(generator, sizes=(7, 70, 1030), dtype=torch.bfloat16):
    """bfloat16 params with float32 masters and float32 Adam state (parameter mode 2), random; with dtype float32,
    float32 params and no masters (mode 0)."""
    masters = [torch.randn(n, generator=generator) for n in sizes]
    return {
        "params": [m.to(dtype) for m in masters],
        "grads": [torch.randn(n, generator=generator).to(dtype) for n in sizes],
        "exp_avgs": [torch.randn(n, generator=generator) for n in sizes],
        "exp_avg_sqs": [torch.rand(n, generator=generator) for n in sizes],
        "steps": [torch.full((1,), 3.0) for _ in sizes],
        "masters": masters if dtype != torch.float32 else [],
    }


def _adam(ops, backend, **options):
    hyper = dict(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, maximize=False, decoupled=True)
    hyper.update(options)
    sizes = hyper.pop("group_sizes", None)
    if sizes is not None:  # one value per group for every hyperparameter
        hyper = {key: value if isinstance(value, list) else [value] * len(sizes) for key, value in hyper.items()}
    functional.adam(
        ops["params"], ops["grads"], ops["exp_avgs"], ops["exp_avg_sqs"], [], ops["steps"], amsgrad=False,
        masters=ops["masters"], param_mode=2 if ops["masters"] else 0, group_sizes=sizes, backend=backend, **hyper,
    )  # fmt: skip


def _misaligned(tensor):
    """A copy of `tensor` one element past a 64-byte boundary: not aligned for 16-byte vector accesses."""
    room = torch.empty(tensor.numel() + 1, dtype=tensor.dtype)
    view = room[1:].view(tensor.shape)
    view.copy_(tensor)
    return view


ROLES = [(torch.bfloat16, role) for role in ("params", "grads", "exp_avgs", "exp_avg_sqs", "masters")]
ROLES += [(torch.float32, role) for role in ("params", "grads")]


@pytest.mark.parametrize("dtype,role", ROLES, ids=[f"{str(d)[6:]}-{r}" for d, r in ROLES])
@pytest.mark.parametrize("backend", BACKENDS)
def test_misaligned_operands_give_the_aligned_results(backend, dtype, role, generator):
    """Any one operand list off the 16-byte boundary: the kernels take their element-wise path for those tensors
    (the CUDA binding and Triton check every operand's address, not only the params') and give the same bits."""
    aligned = _mixed_operands(generator, dtype=dtype)
    shifted = {name: [t.clone() for t in tensors] for name, tensors in aligned.items()}
    shifted[role] = [_misaligned(t) for t in shifted[role]]
    assert all(t.data_ptr() % 16 for t in shifted[role])
    _adam(aligned, backend)
    _adam(shifted, backend)
    for name in ("params", "exp_avgs", "exp_avg_sqs", "masters"):
        for index, (a, b) in enumerate(zip(aligned[name], shifted[name])):
            assert torch.equal(a, b), f"{name}[{index}]"


CHANGES = {
    # What a second call on the same params and grads changes; the launch tables kept by operand address
    # (csrc/cuda/bindings_cuda.cpp, triton_kernels/_launch.py) must follow it.
    "state tensors": ({"exp_avgs", "exp_avg_sqs"}, {}),
    "masters": ({"masters"}, {}),
    "weight decay mode": (set(), {"decoupled": False}),
    "param groups": (set(), {"group_sizes": [1, 2], "lr": [0.1, 0.01], "weight_decay": [0.1, 0.0]}),
}  # fmt: skip


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_call_uses_what_it_is_given(backend, change, generator):
    """Two calls on the same params and grads, the second with new state or master tensors (equal values, other
    addresses; the old ones kept alive), another weight decay mode or another split into param groups, give what
    the reference backend gives for the same two calls."""
    moved, options = CHANGES[change]
    start = _mixed_operands(generator)
    results = []
    for name in (backend, "reference"):
        ops = {key: [t.clone() for t in tensors] for key, tensors in start.items()}
        _adam(ops, name)
        old = {key: ops[key] for key in moved}
        ops.update({key: [t.clone() for t in ops[key]] for key in moved})
        _adam(ops, name, **options)
        results.append((ops, old))
    (ops, old), (expected, _) = results
    for key in ("params", "exp_avgs", "exp_avg_sqs", "masters", "steps"):
        for index, (a, b) in enumerate(zip(ops[key], expected[key])):
            torch.testing.assert_close(a, b, msg=f"{key}[{index}]")
    for key, tensors in old.items():  # what the first call left there, untouched by the second
        for index, (a, b) in enumerate(zip(tensors, ops[key])):
            assert not torch.equal(a, b), f"the second call wrote the old {key}[{index}]"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_call_on_shorter_tensors_at_the_same_addresses(backend, generator):
    """Views of the first call's tensors that leave out their last three elements: the same addresses, fewer
    elements. The second call updates the views as the reference does and leaves the three elements alone."""
    results = []
    start = _mixed_operands(generator)
    for name in (backend, "reference"):
        whole = {key: [t.clone() for t in tensors] for key, tensors in start.items()}
        _adam(whole, name)
        after_first = {key: [t.clone() for t in tensors] for key, tensors in whole.items()}
        shorter = {key: [t if key == "steps" else t[:-3] for t in tensors] for key, tensors in whole.items()}
        _adam(shorter, name)
        results.append(shorter)
        for key in ("params", "exp_avgs", "exp_avg_sqs", "masters"):
            for index, (now, then) in enumerate(zip(whole[key], after_first[key])):
                assert torch.equal(now[-3:], then[-3:]), f"{name} wrote past the end of {key}[{index}]"
    for key in ("params", "exp_avgs", "exp_avg_sqs", "masters"):
        for index, (a, b) in enumerate(zip(*(ops[key] for ops in results))):
            torch.testing.assert_close(a, b, msg=f"{key}[{index}]")
