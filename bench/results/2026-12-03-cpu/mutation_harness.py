# ruff: noqa: E501, E701, E702, E401
# A record of the third mutation sweep (bench/NOTES.md); run from /tmp with a clone at ROOT, not part of the package.
"""Mutation harness: apply one mutant at a time to /tmp/mut, run its tests, record killed/survived."""

import json
import os
import shutil
import subprocess
import sys
import time

ROOT = "/tmp/mut"
CUDA_TESTS = (
    "tests/test_gpu_backends.py tests/test_cuda_emulation.py tests/test_device_steps.py "
    "tests/test_mixed_precision.py tests/test_non_finite.py tests/test_state_dtype.py "
    "tests/test_amp_and_clipping.py tests/test_functional_operands.py tests/test_launch_grouping.py"
)


def run(mutants, out):
    results = []
    env = dict(os.environ, PYTHONPATH=ROOT, TORCH_EXTENSIONS_DIR="/tmp/mut_ext", FUSEDOPT_REQUIRE_BACKENDS="")
    env.pop("TRITON_INTERPRET", None)
    for m in mutants:
        path = os.path.join(ROOT, m["file"])
        src = open(path).read()
        count = src.count(m["old"])
        if count != 1:
            results.append(dict(name=m["name"], status=f"BAD old count {count}"))
            print(results[-1], flush=True)
            continue
        open(path, "w").write(src.replace(m["old"], m["new"]))
        try:
            if m.get("rebuild_cuda"):
                shutil.rmtree("/tmp/mut_ext", ignore_errors=True)
            t = time.time()
            cmd = f"cd {ROOT} && python -m pytest -x -q -p no:cacheprovider {m['tests']}"
            r = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True, timeout=1800)
            tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
            status = {0: "SURVIVED", 1: "killed"}.get(r.returncode, f"rc={r.returncode}")
            results.append(dict(name=m["name"], status=status, seconds=round(time.time() - t), tail=tail))
        finally:
            open(path, "w").write(src)
        print(json.dumps(results[-1]), flush=True)
        json.dump(results, open(out, "w"), indent=1)
    shutil.rmtree("/tmp/mut_ext", ignore_errors=True)


if __name__ == "__main__":
    ns = {}
    exec(open(sys.argv[1]).read(), ns)
    run(ns["MUTANTS"], sys.argv[2])
