"""Compiler settings of fusedopt's native extensions, shared by setup.py and the JIT build at first use.

This module imports nothing from torch or fusedopt, so setup.py can load it by path before the package exists.
"""

from __future__ import annotations

import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def source_root() -> str:
    """The folder holding csrc/: the repository root in a checkout, fusedopt/_csrc in an installed wheel."""
    installed = os.path.join(PACKAGE_DIR, "_csrc")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(PACKAGE_DIR), "csrc")


CPU_EXTENSION_NAME = "fusedopt._cpu_ext"
CPU_SOURCES = ("cpu/fused_cpu.cpp", "cpu/grad_norm.cpp", "cpu/bindings_cpu.cpp")
CPU_INCLUDE_DIRS = ("include",)

# -fno-math-errno lets GCC vectorize sqrt (otherwise every element calls libm to set errno, about 5x slower).
# -O3 turns on the loop vectorizer; OpenMP shares the chunks of a step among threads. The C++ standard is
# torch's choice (its headers decide), so none is set here.
# NOTE [no contraction]: -ffp-contract=off makes every element compute the same IEEE operations in source order.
# With GCC's default (fuse a multiply and an add into an FMA wherever it likes), the vectorized body and the
# scalar tail of one loop, and the loops of two parameter modes, fused differently: the float32 master of
# master_weights="remainder" came out one or two ulps from that of master_weights=True at the tail of a tensor.
# Without contraction a result depends on neither the element's place nor the mode, nor on the machine: the SIMD
# clones, AVX-512, AVX2 and baseline, do the same correctly rounded operations (tests/test_cpu_clones.py builds
# each alone and compares their bits; with contraction on, the AVX2 clone differs). Cost, measured
# (bench/results/2026-11-29-cpu/fp_contract.txt): none beyond noise for float32 and the remainder mode, about 2%
# for bfloat16 params and state, about 5% in the most arithmetic-heavy mode (bfloat16 state and stochastic
# rounding). tests/test_cpu_determinism.py holds it.
_CPU_CXX_FLAGS = ("-O3", "-fno-math-errno", "-ffp-contract=off", "-fopenmp", "-Wall", "-Wextra")
CPU_LINK_FLAGS = ("-fopenmp",)

# CI sets FUSEDOPT_WERROR=1 so that a new compiler warning fails the build; users' builds only warn.
WERROR_ENV = "FUSEDOPT_WERROR"


def cpu_cxx_flags() -> list[str]:
    flags = list(_CPU_CXX_FLAGS)
    if os.environ.get(WERROR_ENV) == "1":
        flags.append("-Werror")
    return flags


# Set FUSEDOPT_SKIP_CPU_BUILD=1 to install without compiling; the extension is then JIT-built on first use.
SKIP_CPU_BUILD_ENV = "FUSEDOPT_SKIP_CPU_BUILD"


def cpu_sources(root: str | None = None) -> list[str]:
    root = root or source_root()
    return [os.path.join(root, s) for s in CPU_SOURCES]


def cpu_include_dirs(root: str | None = None) -> list[str]:
    root = root or source_root()
    return [os.path.join(root, d) for d in CPU_INCLUDE_DIRS]


def cpu_jit_arguments(extra_cflags: tuple[str, ...] = ()) -> dict:
    """torch.utils.cpp_extension.load's arguments for the CPU extension (besides its name), with `extra_cflags`."""
    return dict(
        sources=cpu_sources(),
        extra_include_paths=cpu_include_dirs(),
        extra_cflags=[*cpu_cxx_flags(), *extra_cflags],
        extra_ldflags=list(CPU_LINK_FLAGS),
    )


CUDA_EXTENSION_NAME = "fusedopt._cuda_ext"
CUDA_SOURCES = ("cuda/fused_cuda.cu", "cuda/bindings_cuda.cpp")

# FUSEDOPT_CUDA_ARCH="80;90" (the default: A100 and H100/H200) chooses the GPU architectures to build for;
# FUSEDOPT_SKIP_CUDA_BUILD=1 skips the CUDA extension in setup.py (it is then JIT-built on first use on a GPU).
CUDA_ARCH_ENV = "FUSEDOPT_CUDA_ARCH"
DEFAULT_CUDA_ARCHS = "80;90"
SKIP_CUDA_BUILD_ENV = "FUSEDOPT_SKIP_CUDA_BUILD"


def cuda_sources(root: str | None = None) -> list[str]:
    root = root or source_root()
    return [os.path.join(root, s) for s in CUDA_SOURCES]


def cuda_arch_flags() -> list[str]:
    archs = [a.strip() for a in os.environ.get(CUDA_ARCH_ENV, DEFAULT_CUDA_ARCHS).replace(",", ";").split(";")]
    flags = []
    for arch in filter(None, archs):
        number = arch.replace(".", "").replace("sm_", "")
        if not number.isdigit():
            raise ValueError(f"{CUDA_ARCH_ENV}: {arch!r} is not a CUDA architecture such as 80 or 90")
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
    return flags


def binding_cxx_flags() -> list[str]:
    """Host compiler flags of the CUDA extension's torch binding."""
    return ["-O3", "-Wall", "-Wextra"] + (["-Werror"] if os.environ.get(WERROR_ENV) == "1" else [])


# No --use_fast_math: the kernels' square roots and divisions stay correctly rounded and float32 subnormals are kept,
# as on the CPU and in torch (scripts/ptx_checks.py checks the PTX of these flags in CI).
_NVCC_CODE_FLAGS = ("-O3", "-lineinfo")


# What torch.utils.cpp_extension puts in front of every nvcc command of an extension build (its COMMON_NVCC_FLAGS):
# the half/bfloat16 operator and conversion switches change which code cuda_fp16.h and cuda_bf16.h give the kernels.
# The standalone compile check passes them too, so the PTX and registers it checks are those of the real build;
# tests/test_build_config.py compares this copy with the installed torch's.
TORCH_COMMON_NVCC_FLAGS = (
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
)


def nvcc_code_flags() -> list[str]:
    """nvcc's code generation flags for the kernels, without the architectures."""
    return list(_NVCC_CODE_FLAGS)


def nvcc_standalone_flags() -> list[str]:
    """The flags of the real build's nvcc commands without torch or the architectures (scripts/check_cuda_compile.sh):
    torch's own, then fusedopt's."""
    return [*TORCH_COMMON_NVCC_FLAGS, *nvcc_code_flags()]


def nvcc_flags() -> list[str]:
    flags = nvcc_code_flags() + cuda_arch_flags()
    if os.environ.get(WERROR_ENV) == "1":
        flags += ["-Werror", "all-warnings"]
    return flags
