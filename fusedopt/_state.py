"""optimizer.state that notices when a parameter's entry is replaced from outside.

NOTE [foreign state]: fusedopt keeps each parameter's state in its own flat buffers and its step counters where
the backend wants them (NOTE [flat state] in _tensors.py, NOTE [device steps] in csrc/cuda/fused_cuda.h), and the
step plan (NOTE [step plan]) keeps their addresses. Some engines write state without load_state_dict: torch's
ZeroRedundancyOptimizer.load_state_dict assigns `optimizer.state[param] = {...}` on its local optimizer, with the
checkpoint's own tensors (the very tensors of a live optimizer when the checkpoint was not serialized) and every
zero-dimensional tensor, step counters included, moved to the CPU. This mapping counts such assignments, so the
step plan sees that it is stale, and records which parameters were given new entries, so that the next step
adopts them (copies them into fusedopt's own buffers, counters to where the backend keeps them) before it runs.
Replacing a single tensor inside an entry (`state[p]["exp_avg"] = t`) is not seen; in-place changes need not be.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from torch import Tensor


class TrackedState(defaultdict):
    """A defaultdict(dict) keyed by parameter, like torch.optim's, that counts changes of its entries (`version`)
    and remembers which parameters were given an entry since the optimizer last adopted them (`assigned`)."""

    def __init__(self, entries: Any = ()) -> None:
        super().__init__(dict, entries)
        self.version = 0
        self.assigned: dict[Tensor, None] = dict.fromkeys(self.keys())

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __setitem__(self, param: Tensor, entry: dict) -> None:
        super().__setitem__(param, entry)  # defaultdict's lazily made entries come here too
        self.version += 1
        self.assigned[param] = None

    def __delitem__(self, param: Tensor) -> None:
        super().__delitem__(param)
        self.version += 1
        self.assigned.pop(param, None)

    def pop(self, *args):
        self.version += 1
        self.assigned.pop(args[0], None)
        return super().pop(*args)

    def popitem(self):
        param, entry = super().popitem()
        self.version += 1
        self.assigned.pop(param, None)
        return param, entry

    def clear(self) -> None:
        super().clear()
        self.version += 1
        self.assigned.clear()

    def update(self, *args, **kwargs) -> None:
        for param, entry in dict(*args, **kwargs).items():
            self[param] = entry

    def __ior__(self, other):
        self.update(other)
        return self

    def setdefault(self, param: Tensor, entry: Any = None) -> Any:
        if param not in self:
            self[param] = entry
        return self[param]

    def take_assigned(self) -> list[Tensor]:
        """The parameters given an entry since the last call, with a non-empty one."""
        assigned = [p for p in self.assigned if self.get(p)]
        self.assigned.clear()
        return assigned
