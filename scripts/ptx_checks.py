"""Checks, on PTX, what no test here can run: how the GPU kernels round and how they access memory.

Arithmetic: square roots and divisions correctly rounded (`sqrt.rn`, `div.rn`), none approximate (`sqrt.approx`,
`div.approx`, `div.full`, `rsqrt.approx`, float32 `rcp.approx`), and no float32 subnormal flushed to zero (`.ftz`).
Triton's float32 `tl.sqrt` and `/` compile to approximate instructions (hence fusedopt's `ieee_sqrt`/`ieee_div`), and
nvcc's `--use_fast_math` makes every sqrt and division approximate and flushes subnormals; either would make a GPU
step differ from the reference by more than the last bit, where only multiply-add contraction may differ.
libdevice's correctly rounded float64 `pow` (the CUDA kernels' bias corrections) starts its Newton iteration from
`rcp.approx.ftz.f64`, and its float64 `exp` (the Triton kernels') tests the range of its argument with `abs.ftz.f32`
and `setp.*.ftz.f32` on the float64's upper word: those compute no float values and are allowed. Flushing counts
where it changes a float32 value: arithmetic, conversions, min and max.

Memory: every load, store and atomic names its state space (NOTE [global operands] in
csrc/include/fusedopt/device_storage.cuh: a generic access of an operand is LD/ST in SASS, not LDG/STG), and every
kernel moves its widest operand with 16-byte global loads and stores (a kernel whose vector path was lost would
still compute the right values, slowly).

Used by scripts/check_cuda_compile.sh (nvcc's PTX: `python scripts/ptx_checks.py FILE.ptx`, every kernel of the
file) and by tests/triton_compile_check.py (Triton's PTX, per kernel variant).
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
# A load, store or atomic without a state space (ld.f32, st.v4.u32, atom.add.u32: generic addressing).
GENERIC_ACCESS = re.compile(
    r"^\s*(?:@!?%p\d+\s+)?((?:ld|st|atom|red)\.(?!(?:global|param|shared|local|const)\b)[\w.]+)", re.M
)
# A 16-byte global access: four 32-bit or two 64-bit lanes.
SIXTEEN_BYTES = r"\b{op}\.global(?:\.\w+)*\.(?:v4\.[bfu]32|v2\.[bfu]64)\b"
ENTRY = re.compile(r"^(?:\.visible\s+)?\.entry\s+(\w+)\(", re.M)


def _counts(pattern: re.Pattern, ptx: str) -> dict[str, int]:
    return dict(collections.Counter(pattern.findall(ptx)))


def approximate_operations(ptx: str) -> dict[str, int]:
    """Count of each approximate or subnormal-flushing floating-point instruction in `ptx`."""
    return _counts(APPROXIMATE, ptx)


def correctly_rounded_operations(ptx: str) -> dict[str, int]:
    """Count of each correctly rounded square root and division instruction in `ptx`."""
    return _counts(CORRECTLY_ROUNDED, ptx)


def generic_accesses(ptx: str) -> dict[str, int]:
    """Count of each load, store and atomic in `ptx` that goes through generic addressing."""
    return _counts(GENERIC_ACCESS, ptx)


def sixteen_byte_accesses(ptx: str, op: str) -> int:
    """Number of 16-byte global `op` ("ld" or "st") instructions in `ptx`."""
    return len(re.findall(SIXTEEN_BYTES.format(op=op), ptx))


def kernels(ptx: str) -> dict[str, str]:
    """Each kernel (.entry) of a PTX module with its text, up to the next kernel or the module's end."""
    starts = list(ENTRY.finditer(ptx))
    ends = [m.start() for m in starts[1:]] + [len(ptx)]
    return {m.group(1): ptx[m.start() : end] for m, end in zip(starts, ends)}


def problems(ptx: str, module_kernels: dict[str, str], rounded: dict[str, int]) -> list[str]:
    """What is wrong with a module of optimizer kernels (empty: nothing), given its kernels and its correctly
    rounded operations."""
    found = [] if module_kernels else ["no kernels"]
    approximate = approximate_operations(ptx)
    if approximate:
        found.append(f"approximate or flushing instructions {approximate}")
    if not rounded:
        found.append("no correctly rounded sqrt or division")
    for name, text in module_kernels.items():
        generic = generic_accesses(text)
        if generic:
            found.append(f"{name}: generic accesses {generic}")
        if not (sixteen_byte_accesses(text, "ld") and sixteen_byte_accesses(text, "st")):
            found.append(f"{name}: no 16-byte global loads and stores")
    return found


def main(paths: list[str]) -> int:
    failed = False
    for path in paths:
        with open(path) as f:
            ptx = f.read()
        module_kernels, rounded = kernels(ptx), correctly_rounded_operations(ptx)
        found = problems(ptx, module_kernels, rounded)
        print(
            f"{path}: {len(module_kernels)} kernels; correctly rounded {rounded}; "
            f"{'; '.join(found) if found else 'no approximate arithmetic, no generic accesses, 16-byte accesses'}"
        )
        failed = failed or bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
