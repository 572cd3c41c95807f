"""The fused C++ CPU backend (csrc/cpu/): one OpenMP + SIMD pass per dtype and state layout, across param
groups; steps after the first run from a step plan (NOTE [step plan])."""

from __future__ import annotations

import torch

from fusedopt import _extensions
from fusedopt.backends._extension_backend import ExtensionBackend


class CpuBackend(ExtensionBackend):
    name = "cpu"
    device_steps = False

    def unavailable_reason(self, device: torch.device) -> str | None:
        if device.type != "cpu":
            return f"it updates CPU tensors only, these are on {device.type}"
        return _extensions.cpu_extension_error()

    def _extension(self):
        return _extensions.cpu_extension()
