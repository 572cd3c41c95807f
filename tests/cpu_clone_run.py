"""Steps the CPU backend with one build of the CPU extension and saves every result (for tests/test_cpu_clones.py).

    python tests/cpu_clone_run.py ISA OUT

ISA "installed" uses the extension as installed (all target clones, the best one for this machine picked at load);
a number builds the extension with that clone alone (FUSEDOPT_CPU_ISA in csrc/cpu/parallel_chunks.h) and uses it.
Each build runs in its own process: two builds of one extension in a process would share its module's symbols.
"""

from __future__ import annotations

import functools
import sys

import torch
from helpers import FUSED_CLASSES, cases_with_every_state

from fusedopt import _build_config, _extensions, clip

# Parameter dtype and options: every parameter mode and state dtype the CPU kernels have, and the grad factor.
MODES = {
    "float32": (torch.float32, {}),
    "float64": (torch.float64, {}),
    "bfloat16": (torch.bfloat16, {}),
    "float16": (torch.float16, {}),
    "float32, bfloat16 state": (torch.float32, {"state_dtype": torch.bfloat16}),
    "bfloat16, float32 state": (torch.bfloat16, {"state_dtype": torch.float32}),
    "bfloat16 state, stochastic rounding": (
        torch.bfloat16,
        {"state_dtype": torch.bfloat16, "stochastic_rounding": True},
    ),
    "bfloat16, master": (torch.bfloat16, {"master_weights": True}),
    "bfloat16, remainder": (torch.bfloat16, {"master_weights": "remainder"}),
    "float16, master": (torch.float16, {"master_weights": True}),
    "float32, max_grad_norm": (torch.float32, {"max_grad_norm": 0.5}),
}
# A size of each kind: one element, less than a vector, vectors and a tail, and several chunks' worth of vectors.
SIZES = (1, 7, 1023, 5000)
CASES = cases_with_every_state(maximize=False) + cases_with_every_state(maximize=True)


def use_single_clone_build(isa: str) -> None:
    from torch.utils import cpp_extension

    arguments = _build_config.cpu_jit_arguments(extra_cflags=(f"-DFUSEDOPT_CPU_ISA={isa}",))
    module = cpp_extension.load(name=f"fusedopt_cpu_isa{isa}", **arguments)
    _extensions._load_cpu_extension = functools.lru_cache(maxsize=None)(lambda: module)


def results() -> dict[str, torch.Tensor]:
    out = {}
    generator = torch.Generator().manual_seed(0)
    for name, kwargs in CASES:
        for mode, (dtype, options) in MODES.items():
            params = [
                torch.nn.Parameter(torch.randn(n, generator=generator, dtype=torch.float64).to(dtype)) for n in SIZES
            ]
            where = f"{name}{sorted(kwargs.items())} {mode}"
            out.update({f"{where} start {index}": p.detach().clone() for index, p in enumerate(params)})
            optimizer = FUSED_CLASSES[name](params, backend="cpu", **kwargs, **options)
            for _ in range(3):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(dtype)
                optimizer.step()
            for index, p in enumerate(params):
                out[f"{where} param {index}"] = p.detach()
                for key, value in optimizer.state[p].items():
                    out[f"{where} {key} {index}"] = value
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        grads = [torch.randn(n, generator=generator).to(dtype) for n in (*SIZES, 70_000)]
        for norm_type in (2.0, float("inf")):
            out[f"norm {dtype} {norm_type}"] = clip.total_norm(grads, norm_type)
    return out


if __name__ == "__main__":
    isa, path = sys.argv[1:]
    if isa != "installed":
        use_single_clone_build(isa)
    torch.save(results(), path)
