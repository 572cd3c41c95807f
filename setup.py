"""Builds fusedopt and, when torch is importable at build time, its native extensions.

Build against the torch you already have, as flash-attention and Apex do:

    pip install --no-build-isolation .        # or: pip install --no-build-isolation -e .

With build isolation (plain `pip install .`), pip's build environment has no torch: the package installs
without compiled extensions and builds them with ninja at first use (JIT) instead.
Environment switches: FUSEDOPT_SKIP_CPU_BUILD=1 / FUSEDOPT_SKIP_CUDA_BUILD=1 skip an extension;
FUSEDOPT_CUDA_ARCH="80;90" picks the GPU architectures; FUSEDOPT_WERROR=1 turns warnings into errors (CI).
The CUDA extension is built when torch has CUDA and nvcc is found; otherwise it is JIT-built on first use.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import setuptools
from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# pyproject.toml's license is an SPDX expression, which setuptools reads from version 77 on. With
# --no-build-isolation pip builds with this environment's setuptools without checking it against pyproject.toml's
# build requirements, and an older one fails with a schema dump about `project.license`; say what to do instead.
SETUPTOOLS_NEEDED = (77, 0)


def _check_setuptools() -> None:
    try:
        found = tuple(int(part) for part in setuptools.__version__.split(".")[:2])
    except ValueError:
        return  # a development version: let setuptools speak for itself
    if found < SETUPTOOLS_NEEDED:
        sys.exit(
            f"fusedopt: building needs setuptools>={SETUPTOOLS_NEEDED[0]}, found {setuptools.__version__} "
            "(`pip install --no-build-isolation` builds with this environment's setuptools): "
            "pip install 'setuptools>=77'"
        )


def _load_build_config():
    # By path: importing the fusedopt package here would need torch.
    path = os.path.join(ROOT, "fusedopt", "_build_config.py")
    spec = importlib.util.spec_from_file_location("_fusedopt_build_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _native_extensions(config) -> tuple[list, dict]:
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension, include_paths
    except ImportError:
        print(
            "fusedopt: torch is not importable in this build environment, so no extension is compiled now; "
            "they are JIT-built at first use. Use `pip install --no-build-isolation .` to build them here.",
            file=sys.stderr,
        )
        return [], {}
    csrc = os.path.join(ROOT, "csrc")
    # setuptools passes torch's headers with -I; naming them -isystem too makes GCC treat them as system
    # headers, so that -Wextra -Werror (FUSEDOPT_WERROR=1) judge fusedopt's code and not torch's.
    system_headers = [f for p in include_paths() for f in ("-isystem", p)]
    extensions = []
    if os.environ.get(config.SKIP_CPU_BUILD_ENV) == "1":
        print(f"fusedopt: {config.SKIP_CPU_BUILD_ENV}=1, not building the CPU extension (JIT at first use)")
    else:
        extensions.append(
            CppExtension(
                name=config.CPU_EXTENSION_NAME,
                sources=[os.path.relpath(p, ROOT) for p in config.cpu_sources(csrc)],
                include_dirs=config.cpu_include_dirs(csrc),
                extra_compile_args={"cxx": config.cpu_cxx_flags() + system_headers},
                extra_link_args=list(config.CPU_LINK_FLAGS),
            )
        )
    if os.environ.get(config.SKIP_CUDA_BUILD_ENV) == "1":
        print(f"fusedopt: {config.SKIP_CUDA_BUILD_ENV}=1, not building the CUDA extension")
    elif torch.version.cuda is None or CUDA_HOME is None:
        why = "torch is built without CUDA" if torch.version.cuda is None else "nvcc (CUDA_HOME) was not found"
        print(f"fusedopt: not building the CUDA extension: {why}; it is JIT-built on first use on a GPU machine")
    else:
        extensions.append(
            CUDAExtension(
                name=config.CUDA_EXTENSION_NAME,
                sources=[os.path.relpath(p, ROOT) for p in config.cuda_sources(csrc)],
                include_dirs=config.cpu_include_dirs(csrc),
                extra_compile_args={"cxx": config.binding_cxx_flags() + system_headers, "nvcc": config.nvcc_flags()},
            )
        )
    return extensions, {"build_ext": BuildExtension.with_options(use_ninja=True)}


_check_setuptools()
config = _load_build_config()
ext_modules, cmdclass = _native_extensions(config)

setup(
    packages=find_packages(include=["fusedopt", "fusedopt.*"])
    + ["fusedopt.triton_kernels"]
    + ["fusedopt._csrc" + sub for sub in ("", ".common", ".cpu", ".cuda", ".include", ".include.fusedopt")],
    package_dir={"fusedopt.triton_kernels": "triton_kernels", "fusedopt._csrc": "csrc"},
    # The sources travel with the package so that the JIT build at first use works from a wheel too.
    package_data={f"fusedopt._csrc.{sub}": ["*"] for sub in ("common", "cpu", "cuda", "include.fusedopt")},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
