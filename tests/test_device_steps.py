"""NOTE [device steps] (csrc/cuda/fused_cuda.h): the GPU backends' kernels read and advance the step counters and
read GradScaler's found_inf themselves, so the host never waits for the device. On CPU this is tested with the
interpreted Triton kernels (the same programs the GPU runs, step counters and found_inf in CPU memory) and the CPU
backend (whose binding reads found_inf in C++); tests/test_cuda.py checks on a GPU that no step synchronises."""

from __future__ import annotations

import pytest
import torch
from conftest import AVAILABLE_ON_CPU, CPU_BACKENDS, EMULATED_CUDA
from helpers import FUSED_CLASSES, TORCH_CLASSES, assert_close_detailed

import fusedopt
from fusedopt import functional

TRITON = [b for b in AVAILABLE_ON_CPU if b == "triton"]
# Kernels that read the step counters on the device: Triton (interpreted) and CUDA (host emulation, NOTE [cuda host
# emulation]).
DEVICE_STEP_KERNELS = TRITON + EMULATED_CUDA
KERNEL_BACKENDS = [b for b in ("cpu", "triton") if b in AVAILABLE_ON_CPU] + EMULATED_CUDA
pytestmark = pytest.mark.usefixtures("cuda_on_cpu")
SIZES = (0, 1, 7, 1025)


class NoHostRead(torch.Tensor):
    """A tensor whose value may be used by kernels but never read by Python: reading it on the host (what would
    synchronise with a GPU) fails the test."""

    def _fail(self, *args, **kwargs):
        raise AssertionError("found_inf was read on the host")

    __float__ = __bool__ = __int__ = item = tolist = _fail


def _no_host_read(value: float) -> torch.Tensor:
    return torch.Tensor._make_subclass(NoHostRead, torch.tensor(value))


def _adam_operands(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=generator) for n in SIZES]
    grads = [torch.randn(n, generator=generator) for n in SIZES]
    exp_avgs = [torch.randn(n, generator=generator) for n in SIZES]
    exp_avg_sqs = [torch.rand(n, generator=generator) for n in SIZES]
    steps = [torch.tensor(float(s), dtype=torch.float32) for s in (0, 3, 3, 9)]
    return params, grads, exp_avgs, exp_avg_sqs, steps


def _functional_adam(backend: str, found_inf: torch.Tensor | None, seed: int = 0):
    params, grads, exp_avgs, exp_avg_sqs, steps = _adam_operands(seed)
    functional.adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=0.01, beta1=0.9, beta2=0.99,
                    weight_decay=0.1, eps=1e-8, amsgrad=False, maximize=False, decoupled=True, found_inf=found_inf,
                    backend=backend)  # fmt: skip
    return params + exp_avgs + exp_avg_sqs + steps


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + ["reference"])
def test_found_inf_set_changes_nothing_step_counters_included(backend):
    untouched = _adam_operands()
    after = _functional_adam(backend, torch.tensor(float("inf")))
    for i, (a, b) in enumerate(zip(after, [t for column in (0, 2, 3, 4) for t in untouched[column]])):
        assert torch.equal(a, b), f"operand {i} changed"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + ["reference"])
def test_found_inf_clear_is_a_normal_step(backend):
    with_flag = _functional_adam(backend, torch.tensor(0.0))
    without = _functional_adam(backend, None)
    for i, (a, b) in enumerate(zip(with_flag, without)):
        assert torch.equal(a, b), f"operand {i}"
    assert [float(s) for s in with_flag[-len(SIZES) :]] == [1.0, 4.0, 4.0, 10.0]


@pytest.mark.parametrize("backend", DEVICE_STEP_KERNELS)
def test_kernels_compute_bias_corrections_from_each_counter(backend):
    """The device kernel makes each tensor's bias corrections from its own counter (0, 3, 3, 9 before
    the step), in float64, as the reference computes them on the host."""
    fused = _functional_adam(backend, None, seed=3)
    reference = _functional_adam("reference", None, seed=3)
    for i, (a, b) in enumerate(zip(fused, reference)):
        assert_close_detailed(a, b, f"operand {i}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["AdamW", "RMSprop", "Adagrad"])
def test_optimizer_never_reads_found_inf_on_the_host(backend, name):
    """GradScaler's found_inf goes to the kernels (regular and planned steps); steps where it is set change
    nothing, the others match torch.optim under the same flags."""
    generator = torch.Generator().manual_seed(11)
    params = [torch.nn.Parameter(torch.randn(n, generator=generator)) for n in (5, 1030)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused = FUSED_CLASSES[name](params, lr=0.01, backend=backend)
    expected = TORCH_CLASSES[name](twins, lr=0.01)
    for step in range(5):
        skipped = step in (1, 3)
        grads = [torch.randn(p.shape, generator=generator) for p in params]
        for p, q, g in zip(params, twins, grads):
            p.grad, q.grad = g.clone(), g.clone()
        fused.found_inf = _no_host_read(1.0 if skipped else 0.0)
        before = [p.detach().clone() for p in params]
        fused.step()
        del fused.found_inf
        if skipped:
            assert all(torch.equal(p, b) for p, b in zip(params, before)), f"step {step} changed a param"
        else:
            expected.step()
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_close_detailed(p.detach(), q.detach(), f"param {i}")
        assert float(fused.state[p]["step"]) == float(expected.state[q]["step"]) == 3.0


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + CPU_BACKENDS)
def test_step_counters_where_the_backend_keeps_them(backend):
    """GPU backends: float32 counters beside the params (torch's fused rule, also under a float64 default dtype);
    the others: CPU counters of torch.optim's scalar dtype. Loaded checkpoints are moved to the same place."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        params = [torch.nn.Parameter(torch.randn(3, dtype=torch.float32))]
        optimizer = fusedopt.AdamW(params, backend=backend)
        params[0].grad = torch.ones_like(params[0])
        optimizer.step()
        device_steps = fusedopt.backends.get_backend(backend).device_steps
        expected_dtype = torch.float32 if device_steps else torch.float64
        step = optimizer.state[params[0]]["step"]
        assert step.dtype == expected_dtype and step.device == params[0].device and float(step) == 1.0
        saved = optimizer.state_dict()
        saved["state"][0]["step"] = torch.tensor(41.0, dtype=torch.float64)
        optimizer.load_state_dict(saved)
        step = optimizer.state[params[0]]["step"]
        assert step.dtype == expected_dtype and float(step) == 41.0
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["Adam", "RMSprop", "Adagrad"])
def test_empty_params_still_count_steps(backend, name):
    """A launch of empty tensors only (one program over nothing) advances their counters, as torch.optim does."""
    params = [torch.nn.Parameter(torch.empty(0)), torch.nn.Parameter(torch.empty(0, 3))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused, expected = FUSED_CLASSES[name](params, backend=backend), TORCH_CLASSES[name](twins)
    for _ in range(3):
        for p, q in zip(params, twins):
            p.grad, q.grad = torch.empty_like(p), torch.empty_like(q)
        fused.step()
        expected.step()
    assert [float(fused.state[p]["step"]) for p in params] == [float(expected.state[q]["step"]) for q in twins]
    assert float(fused.state[params[0]]["step"]) == 3.0


@pytest.mark.parametrize("backend", TRITON)
def test_launch_ticket_is_reset_after_every_launch(backend):
    """The ticket that finds the last program (NOTE [device steps]) is zero again after each launch, skipped or
    not, so the next launch counts from zero."""
    from fusedopt.triton_kernels import _launch

    params = [torch.nn.Parameter(torch.randn(n)) for n in (5000, 3, 9000)]
    optimizer = fusedopt.Adam(params, backend=backend)
    for step in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.found_inf = torch.tensor(1.0 if step == 1 else 0.0)
        optimizer.step()
    tables = list(_launch._tables.values())
    assert tables and all(int(table.finished) == 0 for table in tables)
    assert [float(optimizer.state[p]["step"]) for p in params] == [2.0] * 3
