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
