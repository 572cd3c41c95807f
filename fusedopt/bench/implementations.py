"""The implementations the benchmark compares: fusedopt's backends, torch.optim's three, other libraries when
installed, and the roofline kernels. Each builds a `step()` over given params, or says why it cannot."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

import fusedopt
from fusedopt import backends

StepFn = Callable[[], None]

TORCH_CLASSES = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
FUSED_CLASSES = {
    "adam": fusedopt.Adam,
    "adamw": fusedopt.AdamW,
    "rmsprop": fusedopt.RMSprop,
    "adagrad": fusedopt.Adagrad,
}


class Unavailable(Exception):
    """The implementation cannot run this case; the message is the row's status ("not installed: ...")."""


def unsupported(error: Exception) -> str:
    """A row status naming why a library refused a case: the first line of its error, shortened."""
    lines = str(error).splitlines()
    return f"unsupported: {type(error).__name__}: {lines[0][:80] if lines else ''}"


@dataclass(frozen=True)
class Implementation:
    name: str
    group: str  # "fusedopt", "torch", "other" or "roofline"
    build: Callable[[str, dict, list[torch.Tensor]], StepFn]
    #: Whether the step moves the case's counted bytes (fusedopt/bench/traffic.py). 8-bit optimizers keep
    #: quantized state with block scales of their own layout: their rows report time and parameters/s, not GB/s.
    counted_bytes: bool = True


def _optimizer_step(optimizer) -> StepFn:
    return optimizer.step


def decay_groups(params: list[torch.Tensor]) -> list:
    """The param groups training scripts use (Hugging Face's Trainer, nanoGPT): matrices with weight decay, biases
    and norm weights (1-D) without. Workloads with only one kind (the flat ones) stay one group."""
    decayed = [p for p in params if p.dim() >= 2]
    plain = [p for p in params if p.dim() < 2]
    if not decayed or not plain:
        return params
    return [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]


def _fusedopt(backend: str) -> Implementation:
    def build(optimizer: str, options: dict, params: list[torch.Tensor]) -> StepFn:
        reason = backends.available_backends(params[0].device).get(backend, "not part of this build")
        if reason is not None:
            raise Unavailable(f"unavailable: {reason}")
        return _optimizer_step(FUSED_CLASSES[optimizer](decay_groups(params), backend=backend, **options))

    return Implementation(f"fusedopt-{backend}", "fusedopt", build)


def _torch(mode: str) -> Implementation:
    flags = {"forloop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[mode]

    def build(optimizer: str, options: dict, params: list[torch.Tensor]) -> StepFn:
        try:
            instance = TORCH_CLASSES[optimizer](decay_groups(params), **options, **flags)
            probe = [torch.nn.Parameter(torch.zeros(2, dtype=params[0].dtype, device=params[0].device))]
            probe[0].grad = torch.zeros_like(probe[0])
            TORCH_CLASSES[optimizer](probe, **options, **flags).step()
        except (RuntimeError, TypeError, ValueError) as error:
            raise Unavailable(unsupported(error)) from None
        return _optimizer_step(instance)

    return Implementation(f"torch-{mode}", "torch", build)


def _import(module: str):
    try:
        return importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 -- a broken install is "not installed" too
        raise Unavailable(f"not installed: {module} ({type(error).__name__})") from None


def _torch_weight_decay(optimizer: str) -> dict:
    """torch.optim's default weight decay for `optimizer` (AdamW 0.01, the others 0), which the fusedopt and torch
    rows use: DeepSpeed's and Apex's Adam classes default to 0 in both modes, which would spare their AdamW rows
    the decay's multiply."""
    return {"weight_decay": inspect.signature(TORCH_CLASSES[optimizer]).parameters["weight_decay"].default}


def _deepspeed(optimizer: str, options: dict, params: list[torch.Tensor]) -> StepFn:
    if optimizer not in ("adam", "adamw") or options.get("amsgrad"):
        raise Unavailable("unsupported: DeepSpeed fuses Adam/AdamW without amsgrad only")
    decoupled = optimizer == "adamw"
    ops = _import("deepspeed.ops.adam")
    if params[0].device.type == "cpu":
        # DeepSpeedCPUAdam keeps float32 state for bfloat16 params by default (8 more bytes per parameter and
        # step); every other row keeps state in the param's dtype (torch's rule), and so does this one.
        extra = {"fp32_optimizer_states": False}
        if "fp32_optimizer_states" not in inspect.signature(ops.DeepSpeedCPUAdam).parameters:
            extra = {}  # a DeepSpeed without the option: its own choice of state dtype
        return ops.DeepSpeedCPUAdam(
            decay_groups(params), adamw_mode=decoupled, **_torch_weight_decay(optimizer), **extra
        ).step
    return ops.FusedAdam(decay_groups(params), adam_w_mode=decoupled, **_torch_weight_decay(optimizer)).step


def _apex(optimizer: str, options: dict, params: list[torch.Tensor]) -> StepFn:
    if params[0].device.type != "cuda":
        raise Unavailable("unsupported: Apex's fused optimizers run on CUDA only")
    apex_optimizers = _import("apex.optimizers")
    if optimizer in ("adam", "adamw"):
        return apex_optimizers.FusedAdam(
            decay_groups(params), adam_w_mode=optimizer == "adamw", **_torch_weight_decay(optimizer), **options
        ).step
    if optimizer == "adagrad":
        return apex_optimizers.FusedAdagrad(decay_groups(params)).step
    raise Unavailable("unsupported: Apex has no fused RMSprop")


def _bitsandbytes(optimizer: str, options: dict, params: list[torch.Tensor]) -> StepFn:
    bnb = _import("bitsandbytes")
    classes = {"adam": "Adam8bit", "adamw": "AdamW8bit", "rmsprop": "RMSprop8bit", "adagrad": "Adagrad8bit"}
    try:
        return getattr(bnb.optim, classes[optimizer])(
            decay_groups(params), **{k: v for k, v in options.items() if k != "centered"}
        ).step
    except Exception as error:  # noqa: BLE001 -- device or option not supported by this bitsandbytes
        raise Unavailable(unsupported(error)) from None


def _torchao(optimizer: str, options: dict, params: list[torch.Tensor]) -> StepFn:
    low_bit = _import("torchao.optim")
    if optimizer not in ("adam", "adamw"):
        raise Unavailable("unsupported: torchao has low-bit Adam/AdamW only")
    # On CPU too (torchao 0.18: its torch.compile'd step runs there; the first step compiles for seconds).
    return getattr(low_bit, "AdamW8bit" if optimizer == "adamw" else "Adam8bit")(decay_groups(params), **options).step


def _roofline(optimizer: str, options: dict, params: list[torch.Tensor]) -> StepFn:
    """A kernel with the step's exact loads and stores and one add per element (fusedopt's stream kernel)."""
    from fusedopt.bench.traffic import num_state_tensors

    states = [[torch.zeros_like(p) for p in params] for _ in range(num_state_tensors(optimizer, options))]
    grads = [torch.randn_like(p) for p in params]
    device = params[0].device
    if device.type == "cpu":
        from fusedopt import _extensions

        extension = _extensions.cpu_extension()
        lists = (states + [[], [], []])[:3]
        return lambda: extension.stream(params, grads, *lists)
    from fusedopt.backends import get_backend

    reasons = []
    for name in ("cuda", "triton"):
        backend = get_backend(name)
        reason = backend.unavailable_reason(device)
        if reason is None:
            return lambda: backend.stream(params, grads, states)
        reasons.append(f"{name}: {reason}")
    raise Unavailable("unavailable: " + "; ".join(reasons))


def _device_copy(optimizer: str, options: dict, params: list[torch.Tensor]) -> StepFn:
    """Device-to-device copy moving the step's bytes (half read, half written): the plain bandwidth roofline."""
    from fusedopt.bench.traffic import step_traffic

    if params[0].device.type != "cuda":
        raise Unavailable("unsupported: the copy roofline is measured on GPUs")
    traffic = step_traffic(optimizer, options, [p.numel() for p in params], params[0].dtype)
    source = torch.empty(traffic.total_bytes // 2, dtype=torch.uint8, device=params[0].device)
    destination = torch.empty_like(source)
    return lambda: destination.copy_(source)


IMPLEMENTATIONS = [
    _fusedopt("cuda"),
    _fusedopt("triton"),
    _fusedopt("cpu"),
    _torch("forloop"),
    _torch("foreach"),
    _torch("fused"),
    Implementation("deepspeed", "other", _deepspeed),
    Implementation("apex", "other", _apex),
    Implementation("bitsandbytes-8bit", "other", _bitsandbytes, counted_bytes=False),
    Implementation("torchao-8bit", "other", _torchao, counted_bytes=False),
    Implementation("roofline-stream", "roofline", _roofline),
    Implementation("roofline-copy", "roofline", _device_copy),
]
