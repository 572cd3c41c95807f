"""AdamW's mixed-precision modes and fused clipping next to torch.optim's way of doing the same (the goals of the
mixed-precision issue): parameters per second and bytes per parameter of each, timed interleaved in one run with a
copy roofline measured in the same run.

    python -m fusedopt.bench.modes --device cuda --size 256M --json modes.json
    python -m fusedopt.bench.modes --device cuda --size gpt2-small

--size is a flat size (one parameter) or a workload of fusedopt-bench (gpt2-small, llama-1.1b, ...), in the
param groups training scripts use (fusedopt.bench.implementations.decay_groups); fusedopt runs on --backend
(default: auto). The rows, with the bytes per parameter a single pass must move (fusedopt/bench/traffic.py):

    torch fp32               torch.optim.AdamW(fused=True), float32 params, grads and state: the baseline (28)
    fusedopt fp32            the same update by fusedopt (28)
    fusedopt bf16 sr         bfloat16 params and state, stochastic rounding (14)
    fusedopt bf16 master     bfloat16 params and grads, float32 master and state, in one pass (28)
    torch bf16 master        torch's way: the fused step on a float32 master with float32 grads, then the
                             master copied into the bfloat16 parameter (28 + 6 = 34)
    fusedopt bf16 remainder  bfloat16 params with an int16 remainder, float32 state (26)
    fusedopt fp32 clip       max_grad_norm=1.0: the norm reads the grads once, the step folds the clip in (28 + 4)
    torch fp32 clip          torch.nn.utils.clip_grad_norm_ (reads the grads, then rewrites them), then the
                             fused step (28 + 4 + 8)
    copy roofline            a copy moving 28 bytes per parameter (14 read, 14 written)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

import fusedopt
from fusedopt.bench import workloads
from fusedopt.bench.cli import metadata, parse_size
from fusedopt.bench.implementations import decay_groups
from fusedopt.bench.runner import L2_MULTIPLE, _time_interleaved, make_params, quartiles_ms
from fusedopt.bench.traffic import step_traffic
from fusedopt.bench.workloads import Workload

BASELINE = "torch fp32"
# The goals the rows are read against: (row, reference row, the least params/s ratio asked for).
GOALS = [("fusedopt bf16 sr", "torch fp32", 1.8), ("fusedopt fp32 clip", "torch fp32 clip", 1.3)]
MAX_GRAD_NORM = 1.0


@dataclass
class ModeRow:
    name: str
    bytes_per_param: float
    status: str = "ok"
    median_ms: float | None = None
    p25_ms: float | None = None
    p75_ms: float | None = None
    params_per_s: float | None = None
    gb_per_s: float | None = None
    pct_of_roofline: float | None = None
    vs_torch_fp32: float | None = None


def _adamw_bytes(param_dtype, state_dtype=None, param_mode="plain") -> int:
    return step_traffic("adamw", {}, [1], param_dtype, state_dtype, param_mode=param_mode).bytes_per_element


def _torch_master(workload: Workload, device: str, seed: int) -> Callable[[], None]:
    """torch's mixed precision with a master copy: fused AdamW on float32 masters, then the bfloat16 copy."""
    masters = make_params(workload, torch.float32, device, seed)
    model_params = [m.detach().to(torch.bfloat16) for m in masters]
    optimizer = torch.optim.AdamW(decay_groups(masters), fused=True)

    def step() -> None:
        optimizer.step()
        torch._foreach_copy_(model_params, [m.detach() for m in masters])

    return step


def _torch_clip(workload: Workload, device: str, seed: int) -> Callable[[], None]:
    params = make_params(workload, torch.float32, device, seed)
    optimizer = torch.optim.AdamW(decay_groups(params), fused=True)

    def step() -> None:
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM, foreach=True)
        optimizer.step()

    return step


def _copy_roofline(numel: int, device: str) -> Callable[[], None]:
    half = _adamw_bytes(torch.float32) * numel // 2
    source = torch.empty(half, dtype=torch.uint8, device=device)
    destination = torch.empty_like(source)
    return lambda: destination.copy_(source)


def row_builders(backend: str) -> dict[str, tuple[float, Callable[[Workload, str, int], Callable[[], None]]]]:
    """Every row: (bytes per parameter, builder of a step over fresh parameters of a workload's shapes)."""
    f32, bf16 = torch.float32, torch.bfloat16

    def fused(dtype, **options):
        def build(workload, device, seed):
            params = decay_groups(make_params(workload, dtype, device, seed))
            return fusedopt.AdamW(params, backend=backend, **options).step

        return build

    def torch_fused(workload, device, seed):
        return torch.optim.AdamW(decay_groups(make_params(workload, f32, device, seed)), fused=True).step

    fp32 = _adamw_bytes(f32)
    return {
        "torch fp32": (fp32, torch_fused),
        "fusedopt fp32": (fp32, fused(f32)),
        "fusedopt bf16 sr": (
            _adamw_bytes(bf16, bf16, "stochastic"), fused(bf16, state_dtype=bf16, stochastic_rounding=True)
        ),
        "fusedopt bf16 master": (_adamw_bytes(bf16, f32, "master"), fused(bf16, master_weights=True, state_dtype=f32)),
        "torch bf16 master": (fp32 + 4 + 2, _torch_master),
        "fusedopt bf16 remainder": (
            _adamw_bytes(bf16, f32, "remainder"), fused(bf16, master_weights="remainder", state_dtype=f32)
        ),
        "fusedopt fp32 clip": (fp32 + 4, fused(f32, max_grad_norm=MAX_GRAD_NORM)),
        "torch fp32 clip": (fp32 + 4 + 8, _torch_clip),
    }  # fmt: skip


def _replicas(device: str, bytes_per_step: float) -> int:
    """On a GPU, enough copies of a small case that every timed step starts from DRAM (NOTE [timing])."""
    if device != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or (64 << 20)
    return max(1, -(-L2_MULTIPLE * l2 // max(int(bytes_per_step), 1)))


def run(device: str, workload: Workload, reps: int, backend: str = "auto") -> list[ModeRow]:
    rows, steppers, numel = [], {}, workload.numel
    for name, (bytes_per_param, build) in row_builders(backend).items():
        row = ModeRow(name, bytes_per_param)
        rows.append(row)
        try:
            replicas = _replicas(device, bytes_per_param * numel)
            steppers[name] = [build(workload, device, seed) for seed in range(replicas)]
        except (RuntimeError, TypeError, ValueError) as error:
            row.status = f"unsupported: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
    roofline = ModeRow("copy roofline", _adamw_bytes(torch.float32))
    rows.append(roofline)
    steppers[roofline.name] = [
        _copy_roofline(numel, device) for _ in range(_replicas(device, roofline.bytes_per_param * numel))
    ]
    timings = _time_interleaved(steppers, reps, device)
    for row in rows:
        if row.name not in timings:
            continue
        row.median_ms, row.p25_ms, row.p75_ms = quartiles_ms(timings[row.name])
        row.params_per_s = numel / (row.median_ms / 1e3)
        row.gb_per_s = row.bytes_per_param * numel / (row.median_ms / 1e3) / 1e9
    baseline = next(r for r in rows if r.name == BASELINE)
    for row in rows:
        if row.gb_per_s and roofline.gb_per_s:
            row.pct_of_roofline = 100.0 * row.gb_per_s / roofline.gb_per_s
        if row.params_per_s and baseline.params_per_s and row is not roofline:
            row.vs_torch_fp32 = row.params_per_s / baseline.params_per_s
    return rows


def goal_lines(rows: list[ModeRow]) -> list[str]:
    """Each goal as measured: the params/s ratio of its row to its reference row."""
    by_name = {r.name: r for r in rows}
    lines = []
    for name, reference, least in GOALS:
        mine, theirs = by_name[name], by_name[reference]
        if not (mine.params_per_s and theirs.params_per_s):
            lines.append(f"- {name} vs {reference}: not measured ({mine.status}; {theirs.status})")
            continue
        ratio = mine.params_per_s / theirs.params_per_s
        verdict = "met" if ratio >= least else "not met"
        lines.append(f"- {name} vs {reference}: {ratio:.2f}x params/s (goal {least}x: {verdict})")
    return lines


def format_rows(rows: list[ModeRow], info: dict, workload: Workload) -> str:
    lines = [
        f"AdamW modes, {workload.name} ({workload.numel:,} parameters in {len(workload.shapes)} tensors) on "
        f"{info.get('gpu') or info['cpu']}, torch {info['torch']}, {info['date']}",
        "",
        "| row | bytes/param | median ms | Gparams/s | GB/s | % copy roofline | vs torch fp32 | status |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.median_ms is None:
            lines.append(f"| {r.name} | {r.bytes_per_param:g} | | | | | | {r.status} |")
            continue
        versus = "" if r.vs_torch_fp32 is None else f"{r.vs_torch_fp32:.2f}x"
        lines.append(
            f"| {r.name} | {r.bytes_per_param:g} | {r.median_ms:.3f} | {r.params_per_s / 1e9:.3f} | "
            f"{r.gb_per_s:.1f} | {r.pct_of_roofline:.1f} | {versus} | {r.status} |"
        )
    return "\n".join(lines + ["", *goal_lines(rows)])


def find_workload(text: str) -> Workload:
    """A flat size (256M: one parameter) or the name of one of fusedopt-bench's workloads."""
    if text[:1].isdigit():
        return workloads.flat(parse_size(text))
    known = {w.name: w for device in ("cuda", "cpu") for w in workloads.default_workloads(device, quick=False)}
    if text not in known:
        raise argparse.ArgumentTypeError(f"unknown workload {text!r}; expected a size or one of {sorted(known)}")
    return known[text]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m fusedopt.bench.modes", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=find_workload, default="256M" if torch.cuda.is_available() else "16M")
    parser.add_argument("--reps", type=int, help="timed rounds (default: 20 on GPU, 7 on CPU)")
    parser.add_argument("--backend", default="auto", help="fusedopt's backend (default: auto)")
    parser.add_argument("--json", metavar="FILE", help="write the rows and the run's metadata as JSON")
    args = parser.parse_args(argv)
    reps = args.reps or (20 if args.device == "cuda" else 7)
    rows = run(args.device, args.size, reps, args.backend)
    info = metadata(["modes", *argv])
    print(format_rows(rows, info, args.size))
    if args.json:
        document = {"metadata": info, "workload": args.size.name, "numel": args.size.numel}
        with open(args.json, "w") as file:
            json.dump({**document, "rows": [asdict(r) for r in rows]}, file, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
