"""The CPU extension's target clones (AVX-512, AVX2, baseline x86-64; csrc/cpu/parallel_chunks.h) give the same bits.

A machine runs only the clone its CPU picks, so the other clones are built alone (FUSEDOPT_CPU_ISA) and each build
steps every optimizer in every parameter mode in a process of its own (tests/cpu_clone_run.py). With contraction off
(NOTE [no contraction] in fusedopt/_build_config.py) every clone computes the same IEEE operations, so a user's
results do not depend on the machine's instruction set; the norms behind max_grad_norm are compared too.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64" or not sys.platform.startswith("linux"),
    reason="the target clones are built for x86-64 Linux (GCC) only",
)


def _run(isa: str, tmp_path) -> dict[str, torch.Tensor]:
    path = tmp_path / f"{isa}.pt"
    subprocess.run(
        [sys.executable, os.path.join(HERE, "cpu_clone_run.py"), isa, str(path)],
        check=True,
        cwd=HERE,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return _run("installed", tmp_path_factory.mktemp("clones"))


@pytest.mark.parametrize("isa", ["3", "1"], ids=["AVX2 clone", "baseline clone"])
def test_every_clone_gives_the_bits_of_the_installed_build(isa, installed, tmp_path):
    alone = _run(isa, tmp_path)
    assert alone.keys() == installed.keys()
    differ = [key for key, value in installed.items() if not torch.equal(alone[key].view(-1), value.view(-1))]
    assert not differ, f"{len(differ)} of {len(installed)} results differ, first: {differ[:5]}"
    # Not equal for want of work: the steps moved every case's largest parameter.
    unmoved = [
        key
        for key in installed
        if key.endswith(" start 3") and torch.equal(installed[key], alone[key[:-8] + " param 3"])
    ]
    assert not unmoved, f"steps left {unmoved[:3]} where they started"
