"""Test configuration: which backends run here, taken from the machine rather than assumed."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import fusedopt  # noqa: E402

# Backends that run on CPU tensors on this machine. CI requires "cpu" (FUSEDOPT_REQUIRE_BACKENDS=cpu,...), so
# a broken build fails loudly instead of silently testing the reference alone.
CPU_BACKENDS = [name for name, reason in fusedopt.available_backends("cpu").items() if reason is None]


def pytest_configure(config):
    required = [b for b in os.environ.get("FUSEDOPT_REQUIRE_BACKENDS", "").split(",") if b]
    missing = {b: fusedopt.available_backends("cpu").get(b, "unknown backend") for b in required}
    missing = {b: why for b, why in missing.items() if why is not None}
    if missing:
        raise pytest.UsageError(f"required fusedopt backends are unavailable: {missing}")


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)
