"""The Triton kernels compile for sm_80 and sm_90 without a GPU, their full blocks use 16-byte accesses, and their
square roots and divisions are correctly rounded, as on the CPU, and every access names its state space
(scripts/ptx_checks.py).

Runs tests/triton_compile_check.py in a subprocess without TRITON_INTERPRET (the other tests interpret the
kernels, which replaces the functions that the compiler needs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _loaded_and_stored(kernel: str, constexprs: dict) -> tuple[int, int]:
    """Operands the kernel's full-block path loads and stores."""
    loads, stores = _optimizer_operands(kernel, constexprs)
    mode = constexprs.get("PARAM_MODE", 0)
    # The master (mode 2) replaces the parameter's load and adds a store; the remainder (3) adds both.
    return loads + (mode == 3), stores + (mode in (2, 3))


def _optimizer_operands(kernel: str, constexprs: dict) -> tuple[int, int]:
    if kernel == "_adam_kernel":
        extra = int(constexprs["AMSGRAD"])
        return 4 + extra, 3 + extra
    if kernel == "_rmsprop_kernel":
        extra = int(constexprs["CENTERED"]) + int(constexprs["MOMENTUM"])
        return 3 + extra, 2 + extra
    if kernel == "_adagrad_kernel":
        return 3, 2
    return 2 + constexprs["NUM_STATES"], 1 + constexprs["NUM_STATES"]


def test_kernels_compile_with_16_byte_accesses_and_correct_rounding():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(__file__), "triton_compile_check.py")
    result = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["target"] for r in rows} == {"sm_80", "sm_90"}
    assert {r["kernel"] for r in rows} == {"_adam_kernel", "_rmsprop_kernel", "_adagrad_kernel", "_stream_kernel"}
    for row in rows:
        assert row["cubin_bytes"] > 0
        loads, stores = _loaded_and_stored(row["kernel"], row["constexprs"])
        if row["constexprs"]["ALIGNED"]:
            # At least one 16-byte access per operand in the unmasked full-block path.
            assert row["vector_loads"] >= loads and row["vector_stores"] >= stores, row
        else:
            assert row["vector_loads"] == 0, row  # no alignment promise, so no vector access may be assumed
        assert row["approximate"] == {} and row["generic_accesses"] == {}, row
        if row["kernel"] != "_stream_kernel":  # the roofline kernel only adds
            compute = "f64" if row["constexprs"]["COMPUTE"] == "fp64" else "f32"
            rounded = row["correctly_rounded"]
            assert rounded.get(f"sqrt.rn.{compute}", 0) > 0 and rounded.get(f"div.rn.{compute}", 0) > 0, row
