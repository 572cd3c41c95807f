"""The Triton backend (triton_kernels/, installed as fusedopt.triton_kernels): one launch per device, dtype and
state layout, across param groups.

Runs compiled on CUDA devices, and on CPU tensors through Triton's interpreter when TRITON_INTERPRET=1 (slow;
that is how CI tests these kernels without a GPU). The kernels are imported at first use, never at import of
fusedopt, and TRITON_INTERPRET must be set before that first use.
"""

from __future__ import annotations

import functools
import importlib
import os
import types

import torch

from fusedopt.backends._extension_backend import ExtensionBackend


@functools.lru_cache(maxsize=None)
def _kernels() -> types.ModuleType | str:
    try:
        return importlib.import_module("fusedopt.triton_kernels")
    except Exception as error:  # noqa: BLE001 -- any import failure makes the backend unavailable, with the reason
        return f"Triton kernels failed to import ({type(error).__name__}: {error}); install triton>=3.0"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class TritonBackend(ExtensionBackend):
    name = "triton"
    device_steps = True

    def unavailable_reason(self, device: torch.device) -> str | None:
        if device.type == "cpu" and not _interpreting():
            return "Triton compiles for GPUs; set TRITON_INTERPRET=1 to run its kernels on CPU tensors (slowly)"
        if device.type not in ("cpu", "cuda"):
            return f"Triton kernels do not run on {device.type} tensors"
        kernels = _kernels()
        return kernels if isinstance(kernels, str) else None

    def planned_module(self) -> types.ModuleType | None:
        """The kernels, whose step plan (triton_kernels/_plan.py) needs the CPU extension's grad gather."""
        kernels = self._extension()
        return kernels if importlib.import_module("fusedopt.triton_kernels._plan").available() else None

    def _extension(self) -> types.ModuleType:
        kernels = _kernels()
        if isinstance(kernels, str):
            raise RuntimeError(kernels)
        return kernels
