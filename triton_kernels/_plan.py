"""NOTE [step plan] (csrc/common/step_operands.h) for the Triton kernels: the launch of a regular step, kept, so that
a later step only reads its params and grads.

The launch table (state, master and step-counter addresses, sizes, blocks) is made once, from a regular step's
checked operands, and the params are kept in C++ by the CPU extension's GradAddresses. At each planned step that
reads every parameter's grad (the same checks as the CPU and CUDA plans: dense, contiguous, like its parameter, and
no grad for the parameters that had none) and returns this step's param and grad addresses, which go to the device
with one asynchronous copy; the kernel takes them in place of the table's first two rows. A step where some planned
parameters have no grad (they are skipped, as torch.optim skips them) launches over the others with a table cut
from the planned one by a few tensor operations (LaunchTable.keeping), so each tensor has the index (and the
stochastic rounding bits) it would have in the regular path's launch. Without the CPU extension there is no
Triton plan, and every step takes the regular path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from fusedopt._tensors import is_plain
from fusedopt.triton_kernels import _launch as multi_tensor


def _grad_addresses():
    from fusedopt import _extensions

    return _extensions.cpu_extension().GradAddresses


def available() -> bool:
    """Whether planned Triton steps can run here (they need the CPU extension's gather)."""
    from fusedopt import _extensions

    return _extensions.cpu_extension_error() is None


class StepOperands:
    """One fused call's operands kept across steps (the Python twin of csrc/common/step_operands.h's class)."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        columns: Sequence[Sequence[torch.Tensor]],
        steps: Sequence[torch.Tensor],
        masters: Sequence[torch.Tensor],
        group_sizes: Sequence[int],
        param_mode: int,
        absent: Sequence[torch.Tensor],
        local_grads: Sequence[torch.Tensor] | None = None,
    ) -> None:
        grads = [p.grad for p in params] if local_grads is None else list(local_grads)
        if len(grads) != len(params) or any(g is None for g in grads):
            raise ValueError("fusedopt StepOperands: every planned param needs a grad")
        #: Which state slots the call fills, in the entry point's slot order (RMSprop: centered, momentum).
        self.slots = [len(column) > 0 for column in columns]
        operands = [list(params), grads, *[list(column) for column in columns if column]]
        if not all(is_plain(t) for column in (*operands, masters) for t in column):
            # A subclass (a DTensor, or one that dispatches to Python) may wrap no memory of its own.
            raise TypeError("fusedopt StepOperands: only plain tensors are planned (local shards of DTensors)")
        if not all(g.is_contiguous() and g.dtype == p.dtype and g.shape == p.shape for p, g in zip(params, grads)):
            # As the C++ StepOperands: a plan is made only from grads the kernels read as they are.
            raise ValueError("fusedopt StepOperands: every grad must be contiguous and like its param")
        self._launch = multi_tensor.prepare(operands, steps, masters, param_mode, 0, group_sizes)
        like = torch.empty(0, dtype=params[0].dtype, device=params[0].device)
        numels = [p.numel() for p in params]
        pinned = self._launch.device.type == "cuda"
        self._addresses = _grad_addresses()(list(params), list(absent), numels, like, pinned)
        self._rows: torch.Tensor | None = None
        self._without_grad: list[int] = []  # this step's planned params whose grad is None
        self._aligned = True  # whether this step's param and grad addresses are 16-byte aligned

    def gather_grads(
        self, local_params: Sequence[torch.Tensor] | None = None, local_grads: Sequence[torch.Tensor] | None = None
    ) -> bool:
        """Reads every parameter and its grad (or checks the given local shards of DTensor params and their grads);
        False when the regular step must run instead."""
        if (local_params is None) != (local_grads is None):
            raise ValueError("fusedopt StepOperands: local params and local grads come together")
        gathered = self._addresses.gather(local_params, local_grads)
        if gathered is None:
            self._rows = None
            return False
        self._rows, self._without_grad, self._aligned = gathered
        return True

    def clear_grads(self) -> None:
        """Sets the grad of every planned and absent param to None (NOTE [planned zero_grad] in
        csrc/common/step_operands.h)."""
        self._addresses.clear_grads()

    def grads(self) -> list[torch.Tensor]:
        """The grads of the planned params that have one, in order, read in C++ (plain tensors only)."""
        return self._addresses.grads()

    def take(
        self, rounding_seed: int, device_grad_factor: torch.Tensor | None, found_inf: torch.Tensor | None
    ) -> multi_tensor.Launch | None:
        """This step's launch, once per successful gather_grads(); None when no planned parameter has a grad."""
        rows, self._rows = self._rows, None
        if rows is None:
            raise RuntimeError("fusedopt: a planned step needs gather_grads() to have returned true first")
        if self._without_grad:
            return self._launch_without_grads(rows, rounding_seed, device_grad_factor, found_inf)
        rows = rows.to(self._launch.device, non_blocking=True)
        return self._launch.for_step(rows[0], rows[1], self._aligned, rounding_seed, device_grad_factor, found_inf)

    def _launch_without_grads(
        self, rows: torch.Tensor, rounding_seed: int, device_grad_factor: torch.Tensor | None,
        found_inf: torch.Tensor | None,
    ) -> multi_tensor.Launch | None:  # fmt: skip
        """The launch over the planned parameters that have a grad this step."""
        count = self._launch.table.num_tensors
        kept = torch.ones(count, dtype=torch.bool)
        kept[self._without_grad] = False
        if not kept.any():
            return None
        # rows has a zero column more when the count is odd (multi_tensor.even_columns)
        table = self._launch.table.keeping(kept, rows[0, :count], rows[1, :count], self._aligned)
        group_sizes = torch.bincount(table.host[2], minlength=len(self._launch.group_sizes)).tolist()
        launch = replace(self._launch, table=table, group_sizes=group_sizes)
        return launch.for_step(
            table.addresses[0], table.addresses[1], True, rounding_seed, device_grad_factor, found_inf
        )
