"""Measures the Triton kernels' block size and warp count on the device at hand: the "measured table" that
triton_kernels/_launch.py's BLOCK and NUM_WARPS should come from (autotuning at run time is not an option: a
tuning run would apply the in-place update several times to data it cannot restore).

    python bench/triton_tune.py --out DIR                       # on a GPU: 256M parameters, CUDA events
    TRITON_INTERPRET=1 python bench/triton_tune.py --device cpu --numel 20000 --reps 1 --out DIR   # dry run

For each (BLOCK, num_warps, dtype) it times AdamW steps over one flat tensor (median of --reps after warm-up) and
the stream roofline, and writes triton_tune.json; the best row per dtype is printed last.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import time

import torch

import fusedopt

BLOCKS = (1024, 2048, 4096, 8192)
WARPS = (4, 8, 16)


def _time(step, reps: int, device: str) -> float:
    for _ in range(2):
        step()
    samples = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            step()
            samples.append(time.perf_counter() - begin)
    return statistics.median(samples)


def tune(numel: int, reps: int, device: str) -> list[dict]:
    multi_tensor = importlib.import_module("fusedopt.triton_kernels._launch")
    stream = importlib.import_module("fusedopt.triton_kernels.stream").stream
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        param = torch.nn.Parameter(torch.randn(numel, device=device, dtype=dtype))
        param.grad = torch.randn_like(param)
        states = [torch.zeros_like(param), torch.zeros_like(param)]
        optimizer = fusedopt.AdamW([param], backend="triton")
        size = torch.empty((), dtype=dtype).element_size()
        for block in BLOCKS:
            for warps in WARPS:
                multi_tensor.BLOCK, multi_tensor.NUM_WARPS = block, warps
                multi_tensor._tables.clear()  # tables are laid out per BLOCK
                optimizer._step_plans.clear()  # and so is the launch a step plan keeps (triton_kernels/_plan.py)
                seconds = _time(optimizer.step, reps, device)
                roofline = _time(lambda: stream([param], [param.grad], [[s] for s in states]), reps, device)
                bytes_moved = numel * 7 * size
                rows.append(
                    dict(dtype=str(dtype), block=block, num_warps=warps, step_ms=seconds * 1e3,
                         gb_per_s=bytes_moved / seconds / 1e9, stream_gb_per_s=bytes_moved / roofline / 1e9)
                )  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--numel", type=int, default=256 << 20)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = tune(args.numel, args.reps, args.device)
    with open(os.path.join(args.out, "triton_tune.json"), "w") as f:
        json.dump(rows, f, indent=1)
    for dtype in sorted({r["dtype"] for r in rows}):
        best = max((r for r in rows if r["dtype"] == dtype), key=lambda r: r["gb_per_s"])
        print(f"best for {dtype}: BLOCK={best['block']} num_warps={best['num_warps']} {best['gb_per_s']:.0f} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
