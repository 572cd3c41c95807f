"""Backend "cuda" on CPU tensors: the CUDA extension's kernels and binding built for the host (NOTE [cuda host
emulation] in fused_cuda_emulated.cpp), so the tests that use the fixture cuda_on_cpu (tests/conftest.py) run the
CUDA code without a GPU.

Needs the CUDA toolkit's headers (no GPU, no CUDA runtime library): $CUDA_HOME/include, or those beside nvcc.
The build is a JIT build with torch.utils.cpp_extension on first use (about 25 s on the 2-core CI machine), kept in
torch's extension cache.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil

import torch

from fusedopt import _build_config
from fusedopt.backends.cuda import CudaBackend

HERE = os.path.dirname(os.path.abspath(__file__))


def cuda_include_dir() -> str | None:
    """The folder holding cuda_runtime.h, or None."""
    candidates = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda-13.0", "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in filter(None, candidates):
        include = os.path.join(root, "include")
        if os.path.isfile(os.path.join(include, "cuda_runtime.h")):
            return include
    return None


def unavailable_reason() -> str | None:
    if cuda_include_dir() is None:
        return "no CUDA headers (cuda_runtime.h) under $CUDA_HOME, /usr/local/cuda-13.0, /usr/local/cuda or nvcc's"
    return None


# FUSEDOPT_EMULATION_SANITIZE=address builds the emulation with AddressSanitizer (scripts/check_cuda_emulation_asan.sh
# runs the tests so, with libasan preloaded): a kernel's read or write past the end of a tensor's allocation fails.
SANITIZE_ENV = "FUSEDOPT_EMULATION_SANITIZE"


@functools.lru_cache(maxsize=None)
def extension():
    """The emulated CUDA extension module (built on first call)."""
    from torch.utils import cpp_extension

    root = _build_config.source_root()
    # The CUDA binding's own host flags (warnings, -Werror in CI), and the kernels' `#pragma unroll`, which g++ ignores.
    flags = [*_build_config.binding_cxx_flags(), "-DFUSEDOPT_CUDA_HOST_EMULATION", "-Wno-unknown-pragmas"]
    sanitizer = os.environ.get(SANITIZE_ENV)
    ldflags = []
    if sanitizer:
        flags += [f"-fsanitize={sanitizer}", "-fno-omit-frame-pointer", "-g"]
        ldflags.append(f"-fsanitize={sanitizer}")
    return cpp_extension.load(
        name="fusedopt_cuda_host_emulation" + (f"_{sanitizer}" if sanitizer else ""),
        extra_ldflags=ldflags,
        sources=[os.path.join(HERE, "fused_cuda_emulated.cpp"), os.path.join(root, "cuda", "bindings_cuda.cpp")],
        extra_include_paths=[*_build_config.cpu_include_dirs(root), os.path.join(root, "cuda"), cuda_include_dir()],
        extra_cflags=flags,
        verbose=os.environ.get("FUSEDOPT_VERBOSE_BUILD") == "1",
    )


def kernel_launches() -> int:
    """How many kernels the emulated extension has launched in this process."""
    count = ctypes.CDLL(extension().__file__).fusedopt_emulated_launches
    count.restype = ctypes.c_int64
    return count()


def set_current_stream(handle: int) -> None:
    """Makes the emulated extension's current stream the stand-in stream `handle` (0 at first): the binding builds its
    tables and launches on it (NOTE [tables on other streams] in csrc/cuda/bindings_cuda.cpp)."""
    set_stream = ctypes.CDLL(extension().__file__).fusedopt_emulated_set_stream
    set_stream.argtypes = [ctypes.c_ssize_t]
    set_stream(handle)


def stream_records(handle: int) -> int:
    """How many times the emulated extension has recorded a table's use on the stand-in stream `handle`."""
    records = ctypes.CDLL(extension().__file__).fusedopt_emulated_stream_records
    records.argtypes = [ctypes.c_ssize_t]
    records.restype = ctypes.c_int64
    return records(handle)


class EmulatedCudaBackend(CudaBackend):
    """The cuda backend, taking CPU tensors and running its kernels on the host."""

    def unavailable_reason(self, device: torch.device) -> str | None:
        if device.type != "cpu":
            return f"the host emulation of the CUDA kernels updates CPU tensors only, these are on {device.type}"
        return unavailable_reason()

    def _extension(self):
        return extension()
