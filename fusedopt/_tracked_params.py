"""A param group's "params" list that counts its changes, so that the step plan sees a parameter replaced in place.

NOTE [tracked params]: the step plan (NOTE [step plan] in _step_plan.py) holds the parameters of each group and is
current while each group's params list is the same object with the same length. A parameter replaced inside the
list (`group["params"][i] = new`, model surgery that keeps the optimizer) leaves both as they were: a plan would
go on stepping the old parameter and leave the new one untouched, where torch.optim steps the list as it is now.
So every group's list is a TrackedParams, whose `version` counts every change made through a list method, and
the plan's key holds it. A list assigned as a whole (`group["params"] = [...]`) is another object, seen by its id.
It pickles and deep-copies as a plain list (the optimizer makes it a TrackedParams again when unpickled).
"""

from __future__ import annotations

from typing import Any


def _counted(method_name: str):
    method = getattr(list, method_name)

    def counted(self, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        self.version += 1
        return result

    counted.__name__ = method_name
    counted.__doc__ = method.__doc__
    return counted


class TrackedParams(list):
    """A list of parameters with a count of its changes (`version`)."""

    __slots__ = ("version",)

    def __init__(self, params: Any = ()) -> None:
        super().__init__(params)
        self.version = 0

    def __reduce__(self):
        return (list, (list(self),))


# Every list method that changes the list counts (`+=` and `*=` return the list itself, as list's do).
for _method_name in (
    "__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove", "clear",
    "sort", "reverse",
):  # fmt: skip
    setattr(TrackedParams, _method_name, _counted(_method_name))


def track_params(group: dict[str, Any]) -> None:
    """Makes the group's params list a TrackedParams (once: a list that is one already is kept as it is)."""
    if not isinstance(group["params"], TrackedParams):
        group["params"] = TrackedParams(group["params"])
