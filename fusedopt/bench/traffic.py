"""Exact memory traffic of one optimizer step: the bytes every implementation must move at the least.

A single-pass step reads param, grad and each state tensor once and writes param and each state once, so per
element it moves  2 * param_bytes + grad_bytes + 2 * state_bytes * num_state_tensors  (the parameter modes of
mixed-precision training change the first term: PARAM_MODE_BYTES).  Per tensor it also reads
and writes its step counter (one float32 or float64). Effective GB/s = these bytes / step time; implementations
that make several passes (torch.optim's for-loop and foreach) move more but are credited the same bytes, so the
figure compares them fairly against the roofline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# State tensors per parameter, by optimizer and options.
OPTIMIZERS = ("adam", "adamw", "rmsprop", "adagrad")


def num_state_tensors(optimizer: str, options: dict) -> int:
    if optimizer in ("adam", "adamw"):
        return 2 + bool(options.get("amsgrad"))
    if optimizer == "rmsprop":
        return 1 + bool(options.get("centered")) + bool(options.get("momentum", 0) > 0)
    if optimizer == "adagrad":
        return 1
    raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")


@dataclass(frozen=True)
class StepTraffic:
    elements: int
    tensors: int
    bytes_per_element: int
    step_counter_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.elements * self.bytes_per_element + self.tensors * 2 * self.step_counter_bytes


# Parameter modes (fusedopt/_rounding.py): what a step reads and writes for the value being updated, in bytes
# per element for a parameter of `p` bytes. The master is read and written and the parameter only written
# ("master"); the bfloat16 parameter and its int16 remainder are both read and written ("remainder").
PARAM_MODE_BYTES = {
    "plain": lambda p: 2 * p,
    "stochastic": lambda p: 2 * p,
    "master": lambda p: 2 * 4 + p,
    "remainder": lambda p: 2 * p + 2 * 2,
}


def step_traffic(
    optimizer: str,
    options: dict,
    sizes: list[int],
    param_dtype: torch.dtype,
    state_dtype: torch.dtype | None = None,
    step_dtype: torch.dtype = torch.float32,
    param_mode: str = "plain",
) -> StepTraffic:
    """Bytes one step of `optimizer` must read and write for parameters of `sizes` elements."""
    state_dtype = state_dtype or param_dtype
    param_bytes = torch.empty((), dtype=param_dtype).element_size()
    state_bytes = torch.empty((), dtype=state_dtype).element_size()
    state_traffic = 2 * state_bytes * num_state_tensors(optimizer, options)
    per_element = PARAM_MODE_BYTES[param_mode](param_bytes) + param_bytes + state_traffic
    return StepTraffic(
        elements=sum(sizes),
        tensors=len(sizes),
        bytes_per_element=per_element,
        step_counter_bytes=torch.empty((), dtype=step_dtype).element_size(),
    )
