"""Base of the backends that call a compiled extension: the bindings take the functional API's arguments under
the same names (pybind11 keyword arguments), so every optimizer forwards its call unchanged."""

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
