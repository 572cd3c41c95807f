"""optimizer.state that notices when a parameter's entry, or a value inside one, is replaced from outside.

NOTE [foreign state]: fusedopt keeps each parameter's state in its own flat buffers and its step counters where
the backend wants them (NOTE [flat state] in _tensors.py, NOTE [device steps] in csrc/cuda/fused_cuda.h), and the
step plan (NOTE [step plan]) keeps their addresses. Some engines write state without load_state_dict:
- torch's ZeroRedundancyOptimizer.load_state_dict assigns `optimizer.state[param] = {...}` on its local optimizer,
  with the checkpoint's own tensors (the very tensors of a live optimizer when the checkpoint was not serialized)
  and every zero-dimensional tensor, step counters included, moved to the CPU;
- optimizer-state offloading (verl's offload_fsdp_optimizer and load_fsdp_optimizer, and many training scripts)
  moves state between devices value by value: `state[param][name] = value.to(device)`.
A planned step that kept writing the old tensors would leave the new ones behind without a word. This mapping
counts both kinds of assignment, so the step plan sees that it is stale, and records which parameters were given
new values, so that the next step adopts them (copies them into fusedopt's own buffers on the parameter's device,
counters to where the backend keeps them) before it runs. In-place changes (`zero_()`) need not be seen.

Each entry is therefore a TrackedEntry, a dict that tells its mapping of every change. Assigning a dict as an
entry stores a TrackedEntry with its items, so a dict kept by the caller after `state[p] = d` is not the entry
(ZeroRedundancyOptimizer and torch's load_state_dict read entries back from the mapping). Both pickle and
deep-copy as their plain counterparts, and state_dict() hands out plain dicts, so checkpoints never name fusedopt.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from typing import Any

from torch import Tensor


class TrackedEntry(dict):
    """One parameter's entry in a TrackedState: a dict that reports every value set or removed to its mapping.

    Built as a dict is (`TrackedEntry(items)`), as generic code rebuilds a mapping of the same type
    (lightning_utilities' apply_to_collection, which Lightning moves optimizer state with, and accelerate's
    recursively_apply), it belongs to no mapping until a TrackedState stores it."""

    __slots__ = ("_mapping", "_param")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mapping: weakref.ref | None = None
        self._param: Tensor | None = None

    @classmethod
    def of(cls, mapping: TrackedState, param: Tensor, entry: Any) -> TrackedEntry:
        tracked = cls(entry)
        # A weak reference: the mapping holds its entries, and a cycle would keep a dropped optimizer's state
        # (gigabytes of device memory) alive until the cyclic garbage collector ran.
        tracked._mapping = weakref.ref(mapping)
        tracked._param = param
        return tracked

    def __reduce__(self):
        return (dict, (dict(self),))

    def _changed(self) -> None:
        mapping = None if self._mapping is None else self._mapping()
        if mapping is not None and dict.get(mapping, self._param) is self:  # not an entry replaced since
            mapping.entry_changed(self._param)

    def __setitem__(self, name: Any, value: Any) -> None:
        super().__setitem__(name, value)
        self._changed()

    def __delitem__(self, name: Any) -> None:
        super().__delitem__(name)
        self._changed()

    def pop(self, *args):
        value = super().pop(*args)
        self._changed()
        return value

    def popitem(self):
        item = super().popitem()
        self._changed()
        return item

    def clear(self) -> None:
        super().clear()
        self._changed()

    def update(self, *args, **kwargs) -> None:
        super().update(*args, **kwargs)
        self._changed()

    def __ior__(self, other):
        self.update(other)
        return self

    def setdefault(self, name: Any, value: Any = None) -> Any:
        if name not in self:
            self[name] = value
        return self[name]


class TrackedState(defaultdict):
    """A defaultdict(dict) keyed by parameter, like torch.optim's, that counts changes of its entries and of the
    values inside them (`version`) and remembers which parameters were given an entry or a value since the
    optimizer last adopted them (`assigned`)."""

    def __init__(self, *args: Any) -> None:
        # TrackedState(entries), or defaultdict's form TrackedState(default_factory, entries), which generic code
        # uses to rebuild a mapping of the same type; the factory is always dict.
        entries = args[-1] if args and not callable(args[-1]) else ()
        super().__init__(dict)
        for param, entry in dict(entries).items():
            dict.__setitem__(self, param, TrackedEntry.of(self, param, entry))
        self.version = 0
        self.assigned: dict[Tensor, None] = dict.fromkeys(self.keys())

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __copy__(self) -> TrackedState:
        return type(self)(self)

    copy = __copy__

    def entry_changed(self, param: Tensor) -> None:
        self.version += 1
        self.assigned[param] = None

    def __missing__(self, param: Tensor) -> TrackedEntry:
        self[param] = {}  # as defaultdict(dict) makes an entry on first reading
        return dict.__getitem__(self, param)

    def __setitem__(self, param: Tensor, entry: dict) -> None:
        super().__setitem__(param, TrackedEntry.of(self, param, entry))
        self.entry_changed(param)

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
            self[param] = {} if entry is None else entry
        return self[param]

    def take_assigned(self) -> list[Tensor]:
        """The parameters given an entry or a value since the last call, with a non-empty entry."""
        assigned = [p for p in self.assigned if self.get(p)]
        self.assigned.clear()
        return assigned
