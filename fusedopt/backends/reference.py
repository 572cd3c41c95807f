"""The eager reference as a backend: slow, exact to the documented equations, runs on every device."""

from __future__ import annotations

import torch

from fusedopt import reference


class ReferenceBackend:
    name = "reference"

    def unavailable_reason(self, device: torch.device) -> str | None:
        return None

    adam = staticmethod(reference.adam)
    rmsprop = staticmethod(reference.rmsprop)
    adagrad = staticmethod(reference.adagrad)
