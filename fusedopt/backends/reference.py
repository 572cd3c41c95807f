"""The eager reference as a backend: slow, exact to the documented equations, runs on every device.

The backends take one call for several param groups (NOTE [param groups in one launch] in
csrc/common/binding_utils.h); this one splits the call into one reference call per group, handing each group's
tensors and hyperparameters on, and the index of its first tensor, so stochastic rounding keys are the launch's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fusedopt import reference


def _per_group(function: Callable[..., None]) -> Callable[..., None]:
    def call(*columns: Sequence[torch.Tensor], group_sizes: Sequence[int], masters: Sequence[torch.Tensor], **kw):
        # Hyperparameters come as lists (one value per group), the launch's options as single values.
        per_group = {name: kw.pop(name) for name in list(kw) if isinstance(kw[name], list)}
        kw.pop("use_momentum", None)  # implied by the momentum of each group
        found_inf = kw.pop("found_inf", None)
        if found_inf is not None and float(found_inf) != 0.0:
            return  # GradScaler found an inf or NaN: the step changes nothing, step counters included
        device_factor = kw.pop("device_grad_factor", None)
        if device_factor is not None:  # the reference may wait for the device: it is the definition, not fast
            kw["grad_factor"] *= float(device_factor)
        first = 0
        for g, size in enumerate(group_sizes):
            part = [column[first : first + size] for column in columns]
            function(
                *part,
                **{name: values[g] for name, values in per_group.items()},
                masters=masters[first : first + size],
                first_tensor_index=first,
                **kw,
            )
            first += size

    call.__doc__ = function.__doc__
    return call


class ReferenceBackend:
    name = "reference"
    device_steps = False  # the reference reads its CPU step counters on the host

    def unavailable_reason(self, device: torch.device) -> str | None:
        return None

    adam = staticmethod(_per_group(reference.adam))
    rmsprop = staticmethod(_per_group(reference.rmsprop))
    adagrad = staticmethod(_per_group(reference.adagrad))
