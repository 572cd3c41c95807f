"""Test configuration: which backends run here, taken from the machine rather than assumed."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Without a GPU, Triton's kernels are tested through its interpreter on CPU tensors; the switch must be set
# before the kernels are first imported. With a GPU they are tested compiled, on CUDA tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from cuda_emulation import unavailable_reason as cuda_emulation_unavailable_reason  # noqa: E402

import fusedopt  # noqa: E402

# Backends that run on CPU tensors on this machine. CI requires "cpu" and "triton" (FUSEDOPT_REQUIRE_BACKENDS),
# so a broken build fails loudly instead of silently testing the reference alone.
AVAILABLE_ON_CPU = [name for name, reason in fusedopt.available_backends("cpu").items() if reason is None]
# The interpreted Triton backend is far too slow for the large shapes of the shared tests: tests/test_triton.py
# runs it over the same option and dtype matrix on small shapes.
CPU_BACKENDS = [name for name in AVAILABLE_ON_CPU if name != "triton"]
# Without a GPU, backend "cuda" in the tests that ask for it (fixture cuda_on_cpu) is the host emulation of the CUDA
# extension: its kernels and binding built for the CPU, on CPU tensors (NOTE [cuda host emulation]). It needs the
# CUDA headers; CI requires it (FUSEDOPT_REQUIRE_BACKENDS=...,cuda-emulation).
CUDA_EMULATION_REASON = None if torch.cuda.is_available() else cuda_emulation_unavailable_reason()
EMULATED_CUDA = [] if torch.cuda.is_available() or CUDA_EMULATION_REASON is not None else ["cuda"]
# The backends of the shared tests on CPU tensors, the emulated CUDA one included (modules that use it also use the
# fixture cuda_on_cpu).
CPU_TENSOR_BACKENDS = CPU_BACKENDS + EMULATED_CUDA


# GPU tests are not collected without a CUDA device (rather than reported as hundreds of skips); the header
# line says so. bench/gpu_check.sh runs them on a lent GPU.
collect_ignore = ["test_cuda_emulation.py"] if torch.cuda.is_available() else ["test_cuda.py"]


def pytest_report_header(config):
    if torch.cuda.is_available():
        return f"fusedopt: CUDA device {torch.cuda.get_device_name(0)}; GPU tests collected"
    emulation = "their host emulation" if CUDA_EMULATION_REASON is None else f"not run ({CUDA_EMULATION_REASON})"
    return (
        "fusedopt: no CUDA device; tests/test_cuda.py not collected, Triton kernels run through the interpreter, "
        f"CUDA kernels and binding: {emulation}"
    )


def pytest_configure(config):
    required = [b for b in os.environ.get("FUSEDOPT_REQUIRE_BACKENDS", "").split(",") if b]
    available = {**fusedopt.available_backends("cpu"), "cuda-emulation": CUDA_EMULATION_REASON}
    missing = {b: available.get(b, "unknown backend") for b in required}
    missing = {b: why for b, why in missing.items() if why is not None}
    if missing:
        raise pytest.UsageError(f"required fusedopt backends are unavailable: {missing}")


@pytest.fixture
def cuda_on_cpu(monkeypatch):
    """Without a GPU: backend "cuda" is the host emulation of the CUDA extension for this test."""
    if EMULATED_CUDA:
        from cuda_emulation import EmulatedCudaBackend

        from fusedopt import backends

        monkeypatch.setitem(backends._REGISTRY, "cuda", EmulatedCudaBackend())


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="module")
def process_group():
    """A one-process gloo group: enough to run the real DDP, ZeRO and DTensor code paths."""
    import torch.distributed as dist
    from helpers import free_port

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
