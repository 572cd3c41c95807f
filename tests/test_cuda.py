"""GPU-only tests (marker `gpu`): kernel launches per step, no Triton recompilation, and what "auto" picks on a GPU.
The numerics of the GPU backends are tested in tests/test_gpu_backends.py (on CPU tensors too).

They need a CUDA device: bench/gpu_check.sh runs them on the lent GPU (`pytest -m gpu`); without one,
conftest.py does not collect this file (and says so in pytest's header).
"""

from __future__ import annotations

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
