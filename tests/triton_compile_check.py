"""Compiles every Triton kernel for NVIDIA GPUs (sm_80, sm_90) without a GPU, and checks the PTX.

Run by tests/test_triton_compile.py in a subprocess: compiling needs the real @triton.jit functions, which the
interpreter mode of the other tests replaces. Triton's wheel ships ptxas, so the PTX is assembled to cubin too.
Prints one JSON line per compiled variant: kernel, target, constexprs, the counts of 16-byte global loads and
stores in the whole kernel, of its correctly rounded and its approximate floating-point instructions, and of its
loads and stores through generic addressing (scripts/ptx_checks.py).
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler import compile as triton_compile

from fusedopt.triton_kernels import _launch as multi_tensor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import ptx_checks  # noqa: E402  (scripts/ is not a package)

ARG_TYPES = {
    "block_tensor": "*i32",
    "scalars": "*fp64",
    "grad_factor_scale": "*fp32",
    "found_inf": "*fp32",
    "finished": "*i32",
    "num_tensors": "i32",
}
DTYPE_NAMES = {tl.float32: "fp32", tl.float64: "fp64", tl.bfloat16: "bf16", tl.float16: "fp16", tl.int16: "i16"}


PLAIN = dict(PARAM_MODE=0, MASTER=tl.float32)


def variants():
    modules = {
        name: importlib.import_module(f"fusedopt.triton_kernels.{name}") for name in ("adam", "rmsprop", "adagrad")
    }
    adam, rmsprop, adagrad = (getattr(modules[name], f"_{name}_kernel") for name in ("adam", "rmsprop", "adagrad"))
    stream = importlib.import_module("fusedopt.triton_kernels.stream")._stream_kernel
    pairs = [(tl.float32, tl.float32), (tl.float64, tl.float64), (tl.bfloat16, tl.bfloat16), (tl.float16, tl.float16)]
    # Weight decay modes are per-tensor runtime values (groups with and without decay share a launch), so every
    # variant below holds all of them.
    # SCALED reads NOTE [grad factor]'s device part (GradScaler, max_grad_norm), FOUND_INF GradScaler's found_inf
    # (NOTE [device steps]); half the variants have them.
    flags = dict(adam=True, rmsprop=False, adagrad=True)
    rows = {name: dict(ROW=modules[name]._ROW, SCALED=flags[name], FOUND_INF=flags[name]) for name in modules}
    for param, state in pairs:
        compute = tl.float64 if param == tl.float64 else tl.float32
        base = dict(PARAM=param, STATE=state, COMPUTE=compute, ALIGNED=True, BLOCK=multi_tensor.BLOCK, **PLAIN)
        yield adam, dict(base, AMSGRAD=True, **rows["adam"])
        yield rmsprop, dict(base, CENTERED=True, MOMENTUM=True, **rows["rmsprop"])
        yield adagrad, dict(base, **rows["adagrad"])
    base = dict(PARAM=tl.float32, STATE=tl.float32, COMPUTE=tl.float32, ALIGNED=True, BLOCK=multi_tensor.BLOCK, **PLAIN)
    yield adam, dict(base, AMSGRAD=False, **rows["adam"])
    yield rmsprop, dict(base, CENTERED=False, MOMENTUM=False, **rows["rmsprop"])
    yield adam, dict(base, AMSGRAD=False, ALIGNED=False, **rows["adam"])
    # Parameter modes of bfloat16 parameters: stochastic rounding, float32 master, int16 remainder.
    low = dict(PARAM=tl.bfloat16, STATE=tl.float32, COMPUTE=tl.float32, ALIGNED=True, BLOCK=multi_tensor.BLOCK)
    for param_mode, master in ((1, tl.float32), (2, tl.float32), (3, tl.int16)):
        modes = dict(PARAM_MODE=param_mode, MASTER=master)
        yield adam, dict(low, AMSGRAD=False, **modes, **rows["adam"])
        yield adagrad, dict(low, **modes, **rows["adagrad"])
        yield rmsprop, dict(low, CENTERED=False, MOMENTUM=True, **modes, **rows["rmsprop"])
    yield stream, dict(PARAM=tl.float32, STATE=tl.float32, NUM_STATES=2, ALIGNED=True, BLOCK=multi_tensor.BLOCK)


def _source(kernel, signature: dict, constexprs: dict) -> ASTSource:
    """The kernel's source for triton.compile in the installed Triton's form: newer Triton (3.6, 3.8) takes
    constexprs keyed by argument position, with "constexpr" in the signature; Triton 3.0 (torch 2.4's) takes them
    by name and leaves them out of the signature."""
    try:
        return ASTSource(
            fn=kernel, signature=signature, constexprs={(kernel.arg_names.index(n),): v for n, v in constexprs.items()}
        )
    except TypeError:
        runtime_signature = {name: kind for name, kind in signature.items() if kind != "constexpr"}
        return ASTSource(fn=kernel, signature=runtime_signature, constants=dict(constexprs))


def compile_variant(kernel, constexprs: dict, capability: int) -> dict:
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = ARG_TYPES.get(name, "*i64")
    compiled = triton_compile(
        _source(kernel, signature, constexprs),
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": multi_tensor.NUM_WARPS},
    )
    ptx = compiled.asm["ptx"]
    return {
        "kernel": kernel.__name__,
        "target": f"sm_{capability}",
        "constexprs": {k: DTYPE_NAMES.get(v, v) for k, v in constexprs.items()},
        "vector_loads": ptx_checks.sixteen_byte_accesses(ptx, "ld"),
        "vector_stores": ptx_checks.sixteen_byte_accesses(ptx, "st"),
        "correctly_rounded": ptx_checks.correctly_rounded_operations(ptx),
        "approximate": ptx_checks.approximate_operations(ptx),
        "generic_accesses": ptx_checks.generic_accesses(ptx),
        "cubin_bytes": len(compiled.asm["cubin"]),
    }


def main() -> int:
    for capability in (80, 90):
        for kernel, constexprs in variants():
            print(json.dumps(compile_variant(kernel, constexprs, capability)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
