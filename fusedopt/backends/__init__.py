"""Backend registry: which implementations exist, which can run on a device, and what "auto" picks.

A backend is an object with the functional signatures of fusedopt/reference.py (`adam`, `rmsprop`, `adagrad`),
taking contiguous real-valued local tensors. The Python-side plumbing (DTensor shards, complex views,
non-contiguous tensors) lives in fusedopt/functional.py, once for all backends.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch

from fusedopt.backends import cpu as _cpu
from fusedopt.backends import cuda as _cuda
from fusedopt.backends import reference as _reference
from fusedopt.backends import triton as _triton

BACKEND_NAMES = ("auto", "cuda", "triton", "cpu", "reference")


class Backend(Protocol):
    name: str
    #: NOTE [device steps] (csrc/cuda/fused_cuda.h): the kernels read and advance float32 step counters on the
    #: params' device, and take GradScaler's found_inf there; otherwise step counters are CPU tensors.
    device_steps: bool

    def unavailable_reason(self, device: torch.device) -> str | None:
        """None when this backend can update tensors on `device`, else why not."""

    def adam(self, *args, **kwargs) -> None: ...

    def rmsprop(self, *args, **kwargs) -> None: ...

    def adagrad(self, *args, **kwargs) -> None: ...


_REGISTRY: dict[str, Backend] = {
    "cuda": _cuda.CudaBackend(),
    "triton": _triton.TritonBackend(),
    "cpu": _cpu.CpuBackend(),
    "reference": _reference.ReferenceBackend(),
}

# Preference order of "auto" per device type, fastest first; the reference always runs.
# On CPU the interpreted Triton kernels are correct but far too slow to be chosen automatically.
_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}
_warned_fallbacks: set[tuple[str, str]] = set()


def check_backend_name(name: object) -> str:
    if name not in BACKEND_NAMES:
        raise ValueError(f"Invalid backend: {name!r}; expected one of {', '.join(repr(n) for n in BACKEND_NAMES)}")
    return name  # type: ignore[return-value]


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise RuntimeError(f"fusedopt backend {name!r} is not part of this build of fusedopt")
    return _REGISTRY[name]


def resolve(requested: str, device: torch.device) -> Backend:
    """The backend that will update tensors on `device`.

    An explicit request that cannot run raises RuntimeError saying why. "auto" takes the first backend of the
    device's preference list that runs, warning once per device type when it has to fall back.
    """
    check_backend_name(requested)
    if requested != "auto":
        backend = get_backend(requested)
        reason = backend.unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"fusedopt backend {requested!r} cannot run on {device.type} tensors: {reason}")
        return backend
    reasons = []
    for name in _AUTO_ORDER.get(device.type, ("reference",)):
        if name not in _REGISTRY:
            reasons.append(f"{name}: not part of this build")
            continue
        backend = _REGISTRY[name]
        reason = backend.unavailable_reason(device)
        if reason is None:
            if reasons and (device.type, name) not in _warned_fallbacks:
                _warned_fallbacks.add((device.type, name))
                warnings.warn(
                    f"fusedopt: using the {name!r} backend for {device.type} tensors because " + "; ".join(reasons),
                    RuntimeWarning,
                    stacklevel=3,
                )
            return backend
        reasons.append(f"{name}: {reason}")
    raise RuntimeError(f"fusedopt has no backend for {device.type} tensors: " + "; ".join(reasons))


def scalar_dtype() -> torch.dtype:
    # torch.optim's rule for the dtype of a CPU state["step"] (torch/optim/optimizer.py:_get_scalar_dtype).
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def step_counter(backend: Backend, device: torch.device, value: float = 0.0) -> torch.Tensor:
    """A new step counter for a parameter on `device` updated by `backend`: a float32 element on that device
    (NOTE [device steps]; torch's fused optimizers keep theirs the same way), or a CPU tensor of torch.optim's
    scalar dtype."""
    if backend.device_steps:
        return torch.tensor(value, dtype=torch.float32, device=device)
    return torch.tensor(value, dtype=scalar_dtype())


def available_backends(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """For each backend, None when it can run on `device`, else the reason it cannot."""
    device = torch.device(device)
    return {name: backend.unavailable_reason(device) for name, backend in _REGISTRY.items()}
