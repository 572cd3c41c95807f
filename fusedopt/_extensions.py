"""Loads fusedopt's native extensions lazily: the prebuilt module if setup.py built one, else a JIT build.

Nothing here runs at `import fusedopt`. A failure is kept and raised, with the fix, only when a backend that
needs the extension is asked for (the pattern Apex uses), so a machine without a compiler still imports.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import types

from fusedopt import _build_config


class ExtensionUnavailable(RuntimeError):
    """A native extension could neither be imported nor built; the message says why and how to fix it."""


def _load(prebuilt: str, jit_name: str, what: str, build_jit) -> types.ModuleType | ExtensionUnavailable:
    try:
        return importlib.import_module(prebuilt)
    except ImportError as prebuilt_error:
        prebuilt_reason = str(prebuilt_error)
    if os.environ.get("FUSEDOPT_NO_JIT") == "1":
        return ExtensionUnavailable(
            f"the prebuilt {what} extension is missing ({prebuilt_reason}) and FUSEDOPT_NO_JIT=1 forbids a JIT build"
        )
    try:
        from torch.utils import cpp_extension

        return cpp_extension.load(name=jit_name, verbose=os.environ.get("FUSEDOPT_VERBOSE_BUILD") == "1", **build_jit())
    except Exception as jit_error:  # noqa: BLE001 -- any build failure must become a clear, deferred error
        return ExtensionUnavailable(
            f"the fused {what} extension is not available: the prebuilt module failed to import "
            f"({prebuilt_reason}) and the JIT build failed ({type(jit_error).__name__}: {jit_error}). "
            "Install the compiler (and for CUDA, nvcc matching torch's CUDA) and ninja, then reinstall with "
            "`pip install --no-build-isolation .`, or set FUSEDOPT_VERBOSE_BUILD=1 to see the build log."
        )


@functools.lru_cache(maxsize=None)
def _load_cpu_extension() -> types.ModuleType | ExtensionUnavailable:
    return _load(
        _build_config.CPU_EXTENSION_NAME,
        "fusedopt_cpu_ext",
        "CPU",
        _build_config.cpu_jit_arguments,
    )


@functools.lru_cache(maxsize=None)
def _load_cuda_extension() -> types.ModuleType | ExtensionUnavailable:
    import torch

    if torch.version.cuda is None:
        return ExtensionUnavailable(f"this torch ({torch.__version__}) is built without CUDA")
    return _load(
        _build_config.CUDA_EXTENSION_NAME,
        "fusedopt_cuda_ext",
        "CUDA",
        lambda: dict(
            sources=_build_config.cuda_sources(),
            extra_include_paths=_build_config.cpu_include_dirs(),
            extra_cflags=_build_config.binding_cxx_flags(),
            extra_cuda_cflags=_build_config.nvcc_flags(),
        ),
    )


def _module(loaded: types.ModuleType | ExtensionUnavailable) -> types.ModuleType:
    if isinstance(loaded, ExtensionUnavailable):
        raise loaded
    return loaded


def cpu_extension() -> types.ModuleType:
    """The CPU extension module; raises ExtensionUnavailable with the reason if it cannot be had."""
    return _module(_load_cpu_extension())


def cpu_extension_error() -> str | None:
    """Why the CPU extension is unavailable, or None when it loads."""
    loaded = _load_cpu_extension()
    return str(loaded) if isinstance(loaded, ExtensionUnavailable) else None


def cpu_extension_if_built() -> types.ModuleType | None:
    """The CPU extension when it is prebuilt or loaded already; None otherwise, without starting a JIT build (for
    callers that have a plain torch way too)."""
    if _load_cpu_extension.cache_info().currsize == 0 and not _prebuilt_cpu_extension_exists():
        return None
    loaded = _load_cpu_extension()
    return None if isinstance(loaded, ExtensionUnavailable) else loaded


@functools.lru_cache(maxsize=None)
def _prebuilt_cpu_extension_exists() -> bool:
    return importlib.util.find_spec(_build_config.CPU_EXTENSION_NAME) is not None


def cuda_extension() -> types.ModuleType:
    """The CUDA extension module; raises ExtensionUnavailable with the reason if it cannot be had."""
    return _module(_load_cuda_extension())


def cuda_extension_error() -> str | None:
    """Why the CUDA extension is unavailable, or None when it loads."""
    loaded = _load_cuda_extension()
    return str(loaded) if isinstance(loaded, ExtensionUnavailable) else None
