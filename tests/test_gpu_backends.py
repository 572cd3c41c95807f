"""The GPU backends (cuda, triton) against the eager reference and torch.optim's fused kernels, with poisoned
buffers, odd sizes, misaligned views, parameter modes, GradScaler and clipping.

On a GPU (bench/gpu_check.sh, marker `gpu`) they run compiled on CUDA tensors. Without one they run on CPU tensors,
the Triton kernels interpreted and the CUDA kernels and binding built for the host (NOTE [cuda host emulation] in
tests/cuda_emulation/fused_cuda_emulated.cpp), so that the kernels and the tests themselves are exercised before
the few minutes of a lent GPU are spent on them (running them so found two tests that could not have passed on a
GPU). Tests that only mean
something on a GPU (kernel launches per step, recompilation, auto's choice) are in tests/test_cuda.py.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import EMULATED_CUDA
from helpers import (
    FUSED_CLASSES,
    HEAD_AND_TAIL,
    OPTIMIZER_CASES,
    SECOND_GROUP,
    TORCH_CLASSES,
    assert_close_detailed,
    assert_states_close,
    case_id,
    cases_with_every_state,
    clone_params,
    make_params,
    masters_of_both_modes,
    run_steps,
    step_with_equal_head_and_tail,
)
from test_against_torch import assert_matches

from fusedopt import functional

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
pytestmark = [pytest.mark.gpu] if ON_GPU else [pytest.mark.usefixtures("cuda_on_cpu")]
BACKENDS = ["cuda", "triton"] if ON_GPU else [*EMULATED_CUDA, "triton"]
# Odd sizes around the chunk (4096) and vector widths, plus one large enough for many chunks (smaller on CPU,
# where the Triton interpreter's cost is per program).
SHAPES = [(0,), (), (1,), (7,), (4095,), (4097,), (3, 5, 7), (1_000_003,) if ON_GPU else (10_003,)]
STEPS = 10


def _on_device(params):
    return [torch.nn.Parameter(p.detach().to(DEVICE)) for p in params]


def _groups(name, params):
    return [{"params": params[:4]}, {"params": params[4:], **SECOND_GROUP[name]}]


@contextlib.contextmanager
def _no_synchronisation(enabled: bool):
    """On a GPU: any CUDA call inside that waits for the device raises (torch's sync debug mode)."""
    if not (ON_GPU and enabled):
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=case_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_backend_matches_reference(backend, case, dtype, generator):
    name, kwargs = case
    params = _on_device(make_params(dtype, generator, SHAPES))
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](_groups(name, params), backend=backend, **kwargs)
    reference = FUSED_CLASSES[name](_groups(name, twins), backend="reference", **kwargs)
    run_steps([(fused, params), (reference, twins)], STEPS, generator)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_matches(p, q, f"param {i}")
    assert_states_close(fused, reference, compare=assert_matches)


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=case_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_backend_matches_torch_fused(backend, case, generator):
    """float32 against torch.optim's fused CUDA kernels where torch has them (Adam/AdamW; for-loop otherwise:
    torch's fused Adagrad runs on CPU only and it has no fused RMSprop). torch's fused kernels assume every grad
    has its parameter's strides (torch 2.13's CPU kernel silently computes wrong values for a transposed param or
    a strided grad), so this comparison uses contiguous ones; the reference comparisons cover the others."""
    name, kwargs = case
    params = _on_device(make_params(torch.float32, generator, SHAPES)[:-1])  # without the transposed param
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](_groups(name, params), backend=backend, **kwargs)
    flags = dict(fused=True) if name in ("Adam", "AdamW") else dict(foreach=False)
    reference = TORCH_CLASSES[name](_groups(name, twins), **flags, **kwargs)
    run_steps([(fused, params), (reference, twins)], STEPS, generator, noncontiguous_index=None)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_close_detailed(p, q, f"param {i}")


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_views_in_poisoned_buffers(backend, state_dtype, generator):
    """Misaligned views (scalar path) and aligned ones (vector path) inside NaN-filled buffers: every element of
    every view is written correctly and nothing outside them is touched."""
    sizes, guard = [1, 7, 4096, 4099, 100_003], 37
    total = sum(sizes) + guard * (len(sizes) + 1)
    buffers = {
        k: torch.full((total,), float("nan"), device=DEVICE, dtype=torch.bfloat16 if k in "pg" else state_dtype)
        for k in "pgmv"
    }
    views, offset = {k: [] for k in buffers}, guard
    for n in sizes:
        for k, buffer in buffers.items():
            view = buffer[offset : offset + n]
            view.copy_(torch.rand(n, generator=generator).to(DEVICE) + (0 if k == "v" else -0.5))
            views[k].append(view)
        offset += n + guard
    # The second moment is never negative (its square root is taken).
    fresh = {k: torch.rand if k == "v" else torch.randn for k in views}
    aligned = {k: [fresh[k](n, generator=generator).to(DEVICE).to(v[0].dtype) for n in sizes] for k, v in views.items()}
    for layout in (views, aligned):
        expected = {k: [t.clone() for t in ts] for k, ts in layout.items()}
        kwargs = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.1, eps=1e-8, amsgrad=False, maximize=False)
        for target, impl in ((layout, backend), (expected, "reference")):
            steps = [torch.tensor(2.0, device=DEVICE) for _ in sizes]
            functional.adam(target["p"], target["g"], target["m"], target["v"], [], steps, decoupled=True,
                            backend=impl, **kwargs)  # fmt: skip
        for k in "pmv":
            for actual, want in zip(layout[k], expected[k]):
                assert_matches(actual, want, k)
    for k in "pmv":
        assert int(buffers[k].isnan().sum()) == guard * (len(sizes) + 1), f"{k}: a guard element was written"


@pytest.mark.parametrize(
    "mode",
    [dict(master_weights=True), dict(master_weights="remainder"), dict(stochastic_rounding=True, rounding_seed=5)],
    ids=["master", "remainder", "stochastic"],
)
@pytest.mark.parametrize("name", ["AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_param_modes_match_reference(backend, name, mode, generator):
    """bfloat16 parameters with a float32 master, an int16 remainder, or stochastic rounding (whose bits every
    backend draws from the same counter-based hash, so they agree with the reference too)."""
    params = _on_device(make_params(torch.bfloat16, generator, SHAPES))
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](params, backend=backend, state_dtype=torch.float32, **mode)
    reference = FUSED_CLASSES[name](twins, backend="reference", state_dtype=torch.float32, **mode)
    run_steps([(fused, params), (reference, twins)], STEPS, generator)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_matches(p, q, f"param {i}")


@pytest.mark.parametrize("name", ["AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_remainder_master_is_the_float32_master(backend, name, generator):
    """master_weights="remainder" holds master_weights=True's float32 master bit for bit, at every element of every
    size (a vector body or a tail). The kernels of the two modes share their arithmetic, so only a compiler that
    contracts multiply-adds differently in the two could break it (the CPU build turns contraction off, NOTE [no
    contraction]; on a GPU this test is the check)."""
    params = _on_device(make_params(torch.bfloat16, generator, SHAPES))
    for i, (master, joined, _, _) in enumerate(masters_of_both_modes(name, {}, params, backend, generator, STEPS)):
        assert torch.equal(joined, master), f"param {i}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", cases_with_every_state(maximize=False), ids=case_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_same_values_give_the_same_bits_at_the_head_and_the_tail(backend, case, dtype, generator):
    """Equal values at a tensor's head (vector path) and tail (scalar tail or masked block) give equal bits
    (tests/test_cpu_determinism.py for the CPU)."""
    name, kwargs = case
    for key, value in step_with_equal_head_and_tail(name, kwargs, backend, dtype, generator, DEVICE).items():
        assert torch.equal(value[:HEAD_AND_TAIL], value[-HEAD_AND_TAIL:]), f"{key}: head and tail differ"


@pytest.mark.parametrize("max_grad_norm", [None, 0.5], ids=["unclipped", "clipped"])
@pytest.mark.parametrize("name", ["AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_scaled_steps_never_wait_for_the_gpu(backend, name, max_grad_norm, generator):
    """GradScaler's 1/scale, found_inf and the max_grad_norm coefficient are read by the kernels (NOTE [grad
    factor], NOTE [device steps]): a step, regular and planned where the backend plans, makes no synchronising
    CUDA call (torch's sync debug mode raises on any). Step counters stay float32 on the device, the step with
    found_inf set changes nothing, and the result matches the reference. (On CPU tensors nothing can wait for a
    GPU: there the test checks the rest.)"""
    params = _on_device(make_params(torch.float32, generator, SHAPES))
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](_groups(name, params), backend=backend, max_grad_norm=max_grad_norm)
    reference = FUSED_CLASSES[name](_groups(name, twins), backend="reference", max_grad_norm=max_grad_norm)
    for step in range(5):
        grads = [torch.randn(p.shape, generator=generator).to(DEVICE) * 8 for p in params]
        for optimizer, ps in ((fused, params), (reference, twins)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            optimizer.grad_scale = torch.tensor(8.0, device=DEVICE)
            optimizer.found_inf = torch.tensor(1.0 if step == 3 else 0.0, device=DEVICE)
        before = [p.detach().clone() for p in params]
        with _no_synchronisation(enabled=step > 0):  # the first step builds and uploads the launch tables once
            fused.step()
        reference.step()
        if step == 3:
            assert all(torch.equal(p, b) for p, b in zip(params, before)), "a found_inf step changed a param"
        for i, (p, q) in enumerate(zip(params, twins)):
            assert_matches(p, q, f"param {i} after step {step}")
    for p in params:
        counter = fused.state[p]["step"]
        assert counter.device == p.device and counter.dtype == torch.float32 and float(counter) == 4.0
    assert_states_close(fused, reference, compare=assert_matches)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_group_rows_follow_each_tensors_group(backend, generator):
    """One launch over groups [3, 0, 1, 2] with different hyperparameters computes bit for bit what one launch per
    group computes: each tensor finds its group's row of hyperparameters (the empty group between others means
    a tensor's row is not its index)."""
    shapes = [(7,), (4097,), (5, 3), (1,), (100,), (2, 2)]
    params = [torch.randn(shape, generator=generator).to(DEVICE) for shape in shapes]
    grads = [torch.randn(shape, generator=generator).to(DEVICE) for shape in shapes]
    exp_avgs = [torch.rand(shape, generator=generator).to(DEVICE) for shape in shapes]
    exp_avg_sqs = [torch.rand(shape, generator=generator).to(DEVICE) for shape in shapes]
    group_sizes = [3, 0, 1, 2]
    hyper = dict(lr=[1e-2, 5e-1, 3e-2, 2e-2], beta1=[0.9, 0.5, 0.8, 0.7], beta2=[0.999, 0.5, 0.95, 0.9],
                 weight_decay=[0.1, 0.7, 0.0, 0.2], eps=[1e-8, 1e-1, 1e-6, 1e-7],
                 maximize=[False, False, True, False], decoupled=[True, True, False, False])  # fmt: skip
    runs = {}
    for how in ("together", "apart"):
        p, m, v = ([t.clone() for t in ts] for ts in (params, exp_avgs, exp_avg_sqs))
        steps = [torch.tensor(float(i), device=DEVICE) for i in range(len(shapes))]
        if how == "together":
            functional.adam(p, grads, m, v, [], steps, amsgrad=False, group_sizes=group_sizes, backend=backend, **hyper)
        first = 0
        for g, size in enumerate(group_sizes if how == "apart" else []):
            part = slice(first, first + size)
            first += size
            if size:
                functional.adam(
                    p[part], grads[part], m[part], v[part], [], steps[part], amsgrad=False, backend=backend,
                    **{k: values[g] for k, values in hyper.items()},
                )  # fmt: skip
        runs[how] = (p, m, v, steps)
    for together, apart in zip(runs["together"], runs["apart"]):
        for a, b in zip(together, apart):
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode", [dict(), dict(stochastic_rounding=True)], ids=["plain", "stochastic_rounding"])
@pytest.mark.parametrize("name", ["AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_planned_steps_skip_parameters_without_a_grad(backend, name, mode, generator):
    """NOTE [step plan]: a plan made when every parameter had a grad takes the later steps where some have none,
    leaving them out of the launch (the cuda binding and the Triton plan each make a table of the others), without
    waiting for the GPU, and computes bit for bit what the regular path computes; parameters without a grad and
    their step counters stay as they are."""
    dtype = torch.bfloat16 if mode else torch.float32
    params = _on_device(make_params(dtype, generator, SHAPES)[:-1])  # without the transposed one: no plan for it
    twins = clone_params(params)
    planned = FUSED_CLASSES[name](_groups(name, params), backend=backend, **mode)
    regular = FUSED_CLASSES[name](_groups(name, twins), backend=backend, **mode)
    count = len(params)
    missing_by_step = [(), (1,), tuple(range(4, count)), tuple(range(count)), (0, count - 1), ()]
    for step, missing in enumerate(missing_by_step):
        grads = [None if i in missing else torch.randn(p.shape, generator=generator).to(DEVICE, dtype) for i, p in
                 enumerate(params)]  # fmt: skip
        for optimizer, ps in ((planned, params), (regular, twins)):
            for p, g in zip(ps, grads):
                p.grad = None if g is None else g.clone()
        regular._step_plans.clear()
        before = [p.detach().clone() for p in params]
        with _no_synchronisation(enabled=step > 0):
            planned.step()
        regular.step()
        for i, (p, q) in enumerate(zip(params, twins)):
            assert torch.equal(p, q), f"param {i} after step {step}"
            if i in missing:
                assert torch.equal(p, before[i]), f"param {i} has no grad at step {step} but changed"
        for p, q in zip(params, twins):
            for key, value in regular.state[q].items():
                assert torch.equal(planned.state[p][key], value), f"state {key} after step {step}"
    assert len(planned._step_plans) == 1  # the plan of the first step took every later one
    expected = [len(missing_by_step) - sum(i in m for m in missing_by_step) for i in range(count)]
    assert [float(planned.state[p]["step"]) for p in params] == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_zero_grad_from_the_plan(backend, generator, monkeypatch):
    """NOTE [planned zero_grad]: with a current plan, zero_grad() clears every grad (planned parameters and one the
    plan was made without) without torch.optim's loop and without waiting for the GPU; the next steps keep the
    plan."""
    params = _on_device(make_params(torch.float32, generator, SHAPES)[:-1])
    optimizer = FUSED_CLASSES["AdamW"](_groups("AdamW", params), backend=backend)
    absent = 3  # a parameter of 7 elements
    torch_zero_grad_calls = []
    monkeypatch.setattr(
        torch.optim.Optimizer, "zero_grad", lambda self, set_to_none=True: torch_zero_grad_calls.append(1)
    )
    for step in range(3):
        for i, p in enumerate(params):
            if i != absent:  # the plan is made without params[absent]
                p.grad = torch.randn(p.shape, generator=generator).to(DEVICE)
        optimizer.step()
        if step == 0:
            params[absent].grad = torch.randn(params[absent].shape, generator=generator).to(DEVICE)
        with _no_synchronisation(enabled=step > 0):
            optimizer.zero_grad()
        assert all(p.grad is None for p in params), f"a grad is left after zero_grad at step {step}"
    assert not torch_zero_grad_calls and len(optimizer._step_plans) == 1
