"""Checks that PTX does its floating-point arithmetic as the CPU backend and torch do: square roots and divisions
correctly rounded (`sqrt.rn`, `div.rn`), no approximate ones (`sqrt.approx`, `div.approx`, `div.full`,
`rsqrt.approx`, float32 `rcp.approx`), and no flushing of subnormal float32 values to zero (`.ftz`).

Why: a GPU computes what its PTX says, and no test here runs on a GPU. Triton's `tl.sqrt` and `/` on float32 compile
to approximate instructions (hence fusedopt's `ieee_sqrt`/`ieee_div`), and nvcc's `--use_fast_math` turns every
sqrt and division approximate and flushes subnormals; either would make a GPU step differ from the reference by more
than the last bit, where only multiply-add contraction may differ. libdevice's correctly rounded float64 `pow` (the
CUDA kernels' bias corrections) starts its Newton iteration from `rcp.approx.ftz.f64`, and its float64 `exp` (the
Triton kernels') tests the range of its argument with `abs.ftz.f32` and `setp.*.ftz.f32` on the float64's upper
word: those compute no float values and are allowed. Subnormal flushing counts where it changes a float32 value:
arithmetic, conversions, min and max.

Used by scripts/check_cuda_compile.sh (nvcc's PTX: `python scripts/ptx_rounding.py FILE.ptx`) and by
tests/triton_compile_check.py (Triton's PTX, per kernel variant).
"""

from __future__ import annotations

import collections
import re
import sys

APPROXIMATE = re.compile(
    r"\b(?:(?:sqrt|div|rsqrt)\.(?:approx|full)[\w.]*|rcp\.approx(?:\.ftz)?\.f32"
    r"|(?:add|sub|mul|fma|mad|div|sqrt|cvt|min|max|neg)(?:\.\w+)*\.ftz(?:\.\w+)*\.f32)\b"
)
CORRECTLY_ROUNDED = re.compile(r"\b(?:sqrt|div)\.rn\.f(?:32|64)\b")


def approximate_operations(ptx: str) -> dict[str, int]:
    """Count of each approximate or subnormal-flushing floating-point instruction in `ptx`."""
    return dict(collections.Counter(APPROXIMATE.findall(ptx)))


def correctly_rounded_operations(ptx: str) -> dict[str, int]:
    """Count of each correctly rounded square root and division instruction in `ptx`."""
    return dict(collections.Counter(CORRECTLY_ROUNDED.findall(ptx)))


def main(paths: list[str]) -> int:
    failed = False
    for path in paths:
        with open(path) as f:
            ptx = f.read()
        approximate = approximate_operations(ptx)
        rounded = correctly_rounded_operations(ptx)
        print(f"{path}: correctly rounded {rounded or 'none'}; approximate {approximate or 'none'}")
        if approximate or not rounded:
            failed = True
    if failed:
        print("ptx_rounding: approximate float instructions, or no correctly rounded sqrt/div", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
