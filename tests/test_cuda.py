"""GPU-only tests (marker `gpu`): kernel launches per step, no Triton recompilation, what "auto" picks on a GPU, graph
capture, cached tables used on another stream, and a tensor over 2^31 elements.
The numerics of the GPU backends are tested in tests/test_gpu_backends.py (on CPU tensors too).

They need a CUDA device: bench/gpu_check.sh runs them on the lent GPU (`pytest -m gpu`); without one,
conftest.py does not collect this file (and says so in pytest's header).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import make_params, run_steps

import fusedopt

pytestmark = pytest.mark.gpu
GPU_BACKENDS = ["cuda", "triton"]


def _cuda(params):
    return [torch.nn.Parameter(p.detach().cuda()) for p in params]


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


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_step_inside_cuda_graph_capture_refused_untouched(backend, generator):
    """A step captured into a CUDA graph raises torch.optim's error for an optimizer without capturable=True
    (fusedopt has none yet) before anything runs: params, state and step counters stay as they were."""
    params = _cuda(make_params(torch.float32, generator)[:-1])  # contiguous: the second step runs from a plan
    optimizer = fusedopt.AdamW(params, backend=backend)
    run_steps([(optimizer, params)], 2, generator, skip_index=-1, noncontiguous_index=None)
    before = [p.detach().clone() for p in params]
    state = [{k: v.clone() for k, v in optimizer.state[p].items()} for p in params]
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match=r"^Attempting CUDA graph capture of step\(\) for an instance of AdamW"):
        with torch.cuda.graph(graph):
            optimizer.step()
    torch.cuda.synchronize()
    for p, p_before, s_before in zip(params, before, state):
        assert torch.equal(p.detach(), p_before)
        for k, v in s_before.items():
            assert torch.equal(optimizer.state[p][k], v), k


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cached_table_evicted_while_a_launch_on_another_stream_is_queued(backend):
    """NOTE [tables on other streams] (csrc/cuda/bindings_cuda.cpp): a cached table whose launch on a side stream is
    still queued when the table is evicted and its size is allocated again on the default stream; the launch still
    reads its own table (tests/stream_reuse_run.py, in a process of its own)."""
    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [sys.executable, os.path.join(here, "stream_reuse_run.py"), backend],
        capture_output=True, text=True, timeout=300, cwd=here,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_tensor_over_2_31_elements(backend):
    """64-bit indexing: one bfloat16 tensor of 2^31 + 4099 elements (13 GB with its grad and state) and a small
    one after it in the same launch. The elements at its start, around element 2^31 and at its end match the
    reference (the update is elementwise, so the reference runs on copies of those windows), the small tensor too,
    and the poisoned guard after the big tensor stays as it was."""
    huge, guard = 2**31 + 4099, 64
    generator = torch.Generator(device="cuda").manual_seed(0)

    def random(n):
        return torch.randn(n, generator=generator, device="cuda", dtype=torch.bfloat16)

    buffers = [random(huge + guard) for _ in ("param", "grad", "sum")]
    buffers[0][huge:] = float("nan")
    buffers[2].abs_()  # a sum of squares
    params, grads, sums = ([buffer[:huge], random(5)] for buffer in buffers)
    sums[1].abs_()
    windows = [(0, 8192), (2**31 - 4096, 2**31 + 4096), (huge - 5000, huge)]
    copies = [[t[0][a:b].cpu() for a, b in windows] + [t[1].cpu()] for t in (params, grads, sums)]
    kwargs = dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, eps=1e-10, maximize=False)
    steps = [torch.zeros((), device="cuda") for _ in params]
    fusedopt.functional.adagrad(params, grads, sums, steps, backend=backend, **kwargs)
    reference_steps = [torch.zeros(()) for _ in copies[0]]
    fusedopt.functional.adagrad(*copies, reference_steps, backend="reference", **kwargs)
    for actual, expected in ((params, copies[0]), (sums, copies[2])):
        for (a, b), want in zip(windows, expected):
            torch.testing.assert_close(actual[0][a:b].cpu(), want)
        torch.testing.assert_close(actual[1].cpu(), expected[-1])
    assert bool(buffers[0][huge:].isnan().all())
    assert [float(s) for s in steps] == [1.0, 1.0]
    del buffers, params, grads, sums
    torch.cuda.empty_cache()
