"""Every target clone of the CPU extension, built alone, against the installed build (tests/test_cpu_clones.py's
comparison, with counts), and the AVX2 clone built with GCC's default contraction (-ffp-contract=fast) for contrast.

    python bench/results/2026-11-30-cpu/cpu_clones.py > bench/results/2026-11-30-cpu/cpu_clones.txt
"""

import os
import subprocess
import sys
import tempfile

import torch

TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests")
sys.path.insert(0, TESTS)
import cpu_clone_run  # noqa: E402

CONTRACTED = """
import sys
import cpu_clone_run
from fusedopt import _build_config
flags = _build_config.cpu_cxx_flags
_build_config.cpu_cxx_flags = lambda: [*flags(), "-ffp-contract=fast"]
cpu_clone_run.use_single_clone_build("3")
import torch
torch.save(cpu_clone_run.results(), sys.argv[1])
"""


def run(isa: str, folder: str) -> dict:
    path = os.path.join(folder, f"{isa}.pt")
    if isa == "3 contracted":
        command = [sys.executable, "-c", CONTRACTED, path]
    else:
        command = [sys.executable, os.path.join(TESTS, "cpu_clone_run.py"), isa, path]
    subprocess.run(command, check=True, cwd=TESTS, capture_output=True)
    return torch.load(path, weights_only=True)


with tempfile.TemporaryDirectory() as folder:
    installed = run("installed", folder)
    results = sum(1 for key in installed if " start " not in key)
    print(
        f"torch {torch.__version__}; {results} results (params, state tensors, norms) of "
        f"{len(cpu_clone_run.CASES)} optimizer cases x {len(cpu_clone_run.MODES)} modes, sizes {cpu_clone_run.SIZES}"
    )
    for isa, label in (
        ("3", "AVX2 clone alone"),
        ("1", "baseline clone alone"),
        ("3 contracted", "AVX2 clone alone, -ffp-contract=fast"),
    ):
        alone = run(isa, folder)
        differ = [
            k for k in installed if " start " not in k and not torch.equal(alone[k].view(-1), installed[k].view(-1))
        ]
        print(f"{label}: {len(differ)} of {results} results differ from the installed build")
        for key in differ[:3]:
            print(f"    e.g. {key}")
