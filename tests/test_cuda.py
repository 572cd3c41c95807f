"""GPU tests (marker `gpu`): the CUDA and Triton backends on CUDA tensors, against the eager reference, against
torch.optim's own fused CUDA kernels, with poisoned buffers, odd sizes and misaligned views.

They need a CUDA device: bench/gpu_check.sh runs them on the lent GPU (`pytest -m gpu`); without one,
conftest.py does not collect this file (and says so in pytest's header).
"""

from __future__ import annotations

import pytest
import torch
from helpers import (
    FUSED_CLASSES,
    OPTIMIZER_CASES,
    SECOND_GROUP,
    TORCH_CLASSES,
    assert_close_detailed,
    assert_states_close,
    case_id,
    clone_params,
    make_params,
    run_steps,
)
from test_against_torch import assert_matches

import fusedopt
from fusedopt import functional

pytestmark = pytest.mark.gpu
GPU_BACKENDS = ["cuda", "triton"]
# Odd sizes around the chunk (4096) and vector widths, plus one large enough for many chunks.
GPU_SHAPES = [(0,), (), (1,), (7,), (4095,), (4097,), (3, 5, 7), (1_000_003,)]
STEPS = 10


def _cuda(params):
    return [torch.nn.Parameter(p.detach().cuda()) for p in params]


def _groups(name, params):
    return [{"params": params[:4]}, {"params": params[4:], **SECOND_GROUP[name]}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=case_id)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backend_matches_reference(backend, case, dtype, generator):
    name, kwargs = case
    params = _cuda(make_params(dtype, generator, GPU_SHAPES))
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](_groups(name, params), backend=backend, **kwargs)
    reference = FUSED_CLASSES[name](_groups(name, twins), backend="reference", **kwargs)
    run_steps([(fused, params), (reference, twins)], STEPS, generator)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_matches(p, q, f"param {i}")
    assert_states_close(fused, reference, compare=assert_matches)


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=case_id)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backend_matches_torch_fused(backend, case, generator):
    """float32 against torch.optim's fused CUDA kernels where torch has them (Adam/AdamW; for-loop otherwise:
    torch's fused Adagrad runs on CPU only and it has no fused RMSprop). torch's fused kernels assume every grad
    has its parameter's strides (torch 2.13's CPU kernel silently computes wrong values for a transposed param or
    a strided grad), so this comparison uses contiguous ones; the reference comparisons cover the others."""
    name, kwargs = case
    params = _cuda(make_params(torch.float32, generator, GPU_SHAPES)[:-1])  # without the transposed param
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](_groups(name, params), backend=backend, **kwargs)
    flags = dict(fused=True) if name in ("Adam", "AdamW") else dict(foreach=False)
    reference = TORCH_CLASSES[name](_groups(name, twins), **flags, **kwargs)
    run_steps([(fused, params), (reference, twins)], STEPS, generator, noncontiguous_index=None)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_close_detailed(p, q, f"param {i}")


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_views_in_poisoned_buffers(backend, state_dtype, generator):
    """Misaligned views (scalar path) and aligned ones (vector path) inside NaN-filled buffers: every element of
    every view is written correctly and nothing outside them is touched."""
    sizes, guard = [1, 7, 4096, 4099, 100_003], 37
    total = sum(sizes) + guard * (len(sizes) + 1)
    buffers = {
        k: torch.full((total,), float("nan"), device="cuda", dtype=torch.bfloat16 if k in "pg" else state_dtype)
        for k in "pgmv"
    }
    views, offset = {k: [] for k in buffers}, guard
    for n in sizes:
        for k, buffer in buffers.items():
            view = buffer[offset : offset + n]
            view.copy_(torch.rand(n, generator=generator).cuda() + (0 if k == "v" else -0.5))
            views[k].append(view)
        offset += n + guard
    # The second moment is never negative (its square root is taken).
    fresh = {k: torch.rand if k == "v" else torch.randn for k in views}
    aligned = {k: [fresh[k](n, generator=generator).cuda().to(v[0].dtype) for n in sizes] for k, v in views.items()}
    for layout in (views, aligned):
        expected = {k: [t.clone() for t in ts] for k, ts in layout.items()}
        kwargs = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.1, eps=1e-8, amsgrad=False, maximize=False)
        for target, impl in ((layout, backend), (expected, "reference")):
            steps = [torch.tensor(2.0, device="cuda") for _ in sizes]
            functional.adam(target["p"], target["g"], target["m"], target["v"], [], steps, decoupled=True,
                            backend=impl, **kwargs)  # fmt: skip
        for k in "pmv":
            for actual, want in zip(layout[k], expected[k]):
                assert_matches(actual, want, k)
    for k in "pmv":
        assert int(buffers[k].isnan().sum()) == guard * (len(sizes) + 1), f"{k}: a guard element was written"


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_one_kernel_launch_per_device_and_dtype(backend, generator):
    """199 tensors in three param groups (decay, no decay, another lr and betas): one kernel launch per step."""
    params = _cuda(make_params(torch.float32, generator, [(n,) for n in range(1, 200)]))
    groups = [{"params": params[:100]}, {"params": params[100:150], "weight_decay": 0.0},
              {"params": params[150:], "lr": 3e-3, "betas": (0.8, 0.95)}]  # fmt: skip
    optimizer = fusedopt.AdamW(groups, backend=backend)
    run_steps([(optimizer, params)], 2, generator, skip_index=-1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        optimizer.step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and "adam" in e.name]
    assert len(kernels) == 1, [e.name for e in kernels]


def test_triton_does_not_recompile_when_lr_step_or_sizes_change(generator):
    import importlib

    adam_module = importlib.import_module("fusedopt.triton_kernels.adam")
    for sizes in ([5, 4096, 9999], [17, 123_457]):
        params = _cuda([torch.randn(n, generator=generator) for n in sizes])
        optimizer = fusedopt.AdamW(params, backend="triton")
        for step in range(3):
            optimizer.param_groups[0]["lr"] = 1e-3 * (step + 1)
            for p in params:
                p.grad = torch.randn_like(p)
            optimizer.step()
    # JITFunction.device_caches[device][0] maps each specialization to its compiled kernel (triton 3.x).
    kernel_cache = adam_module._adam_kernel.device_caches[torch.cuda.current_device()][0]
    compiled = len(kernel_cache)
    assert compiled == 1


def test_auto_prefers_cuda_on_gpu():
    params = [torch.nn.Parameter(torch.randn(3, device="cuda"))]
    assert fusedopt.AdamW(params).backend in ("cuda", "triton")


@pytest.mark.parametrize(
    "mode",
    [dict(master_weights=True), dict(master_weights="remainder"), dict(stochastic_rounding=True, rounding_seed=5)],
    ids=["master", "remainder", "stochastic"],
)
@pytest.mark.parametrize("name", ["AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_param_modes_match_reference(backend, name, mode, generator):
    """bfloat16 parameters with a float32 master, an int16 remainder, or stochastic rounding (whose bits every
    backend draws from the same counter-based hash, so they agree with the reference too)."""
    params = _cuda(make_params(torch.bfloat16, generator, GPU_SHAPES))
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](params, backend=backend, state_dtype=torch.float32, **mode)
    reference = FUSED_CLASSES[name](twins, backend="reference", state_dtype=torch.float32, **mode)
    run_steps([(fused, params), (reference, twins)], STEPS, generator)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_matches(p, q, f"param {i}")


@pytest.mark.parametrize("max_grad_norm", [None, 0.5], ids=["unclipped", "clipped"])
@pytest.mark.parametrize("name", ["AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_scaled_steps_never_wait_for_the_gpu(backend, name, max_grad_norm, generator):
    """GradScaler's 1/scale, found_inf and the max_grad_norm coefficient are read by the kernels (NOTE [grad
    factor], NOTE [device steps]): a step, regular and planned where the backend plans, makes no synchronising
    CUDA call (torch's sync debug mode raises on any). Step counters stay float32 on the device, the step with
    found_inf set changes nothing, and the result matches the reference."""
    params = _cuda(make_params(torch.float32, generator, GPU_SHAPES))
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](_groups(name, params), backend=backend, max_grad_norm=max_grad_norm)
    reference = FUSED_CLASSES[name](_groups(name, twins), backend="reference", max_grad_norm=max_grad_norm)
    for step in range(5):
        grads = [torch.randn(p.shape, generator=generator).cuda() * 8 for p in params]
        for optimizer, ps in ((fused, params), (reference, twins)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            optimizer.grad_scale = torch.tensor(8.0, device="cuda")
            optimizer.found_inf = torch.tensor(1.0 if step == 3 else 0.0, device="cuda")
        before = [p.detach().clone() for p in params]
        torch.cuda.synchronize()
        if step > 0:  # the first step builds and uploads the launch tables once
            torch.cuda.set_sync_debug_mode("error")
        try:
            fused.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        reference.step()
        if step == 3:
            assert all(torch.equal(p, b) for p, b in zip(params, before)), "a found_inf step changed a param"
        for i, (p, q) in enumerate(zip(params, twins)):
            assert_matches(p, q, f"param {i} after step {step}")
    for p in params:
        counter = fused.state[p]["step"]
        assert counter.device == p.device and counter.dtype == torch.float32 and float(counter) == 4.0
    assert_states_close(fused, reference, compare=assert_matches)
