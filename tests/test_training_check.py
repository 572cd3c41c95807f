"""The low-precision training check (bench/training_check.py) as a test: bfloat16 training with a master copy,
or with stochastic rounding, ends within 2% of float32's loss; plain round-to-nearest bfloat16 does not."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

import training_check  # noqa: E402


def test_low_precision_modes_reach_float32_loss():
    result = training_check.run(steps=600)
    relative = result["relative_to_float32"]
    for name in (
        "bf16 stochastic rounding, fp32 state",
        "bf16 + fp32 master, fp32 state",
        "bf16 + int16 remainder, fp32 state",
    ):
        assert abs(relative[name]) < 0.02, (name, relative)
    assert relative["bf16 round-to-nearest"] > 0.02, relative  # the contrast: small updates are lost
