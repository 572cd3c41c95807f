"""The hand-written CUDA backend (csrc/cuda/): one launch per device, dtype and state layout
across param groups, device tables cached across steps, and a step plan (NOTE [step plan])."""

from __future__ import annotations

import torch

from fusedopt import _extensions
from fusedopt.backends._extension_backend import ExtensionBackend


class CudaBackend(ExtensionBackend):
    name = "cuda"
    device_steps = True

    def unavailable_reason(self, device: torch.device) -> str | None:
        if device.type != "cuda":
            return f"it updates CUDA tensors only, these are on {device.type}"
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return _extensions.cuda_extension_error()

    def _extension(self):
        return _extensions.cuda_extension()
