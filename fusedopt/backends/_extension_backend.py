"""Base of the backends that call a kernel module (a compiled extension, or the Triton kernels): the modules take
the functional API's arguments under the same names, so every optimizer forwards its call unchanged."""

from __future__ import annotations

import types


class ExtensionBackend:
    name: str

    def _extension(self) -> types.ModuleType:
        raise NotImplementedError

    def adam(self, *operands, **hyperparameters) -> None:
        self._extension().adam(*operands, **hyperparameters)

    def rmsprop(self, *operands, **hyperparameters) -> None:
        self._extension().rmsprop(*operands, **hyperparameters)

    def adagrad(self, *operands, **hyperparameters) -> None:
        self._extension().adagrad(*operands, **hyperparameters)

    def planned_module(self) -> types.ModuleType | None:
        """The kernel module when it takes operands kept across steps (NOTE [step plan]), else None."""
        module = self._extension()
        return module if hasattr(module, "StepOperands") else None

    def stream(self, params, grads, states) -> None:
        """The benchmark's roofline: the step's loads and stores, one add per element."""
        self._extension().stream(params, grads, [list(column) for column in states])
