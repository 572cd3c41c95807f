"""fusedopt-bench: the command line of the benchmark (also `python -m fusedopt.bench`).

fusedopt-bench --quick                         # CPU AdamW comparison in under a minute
fusedopt-bench --device cuda --json out.json   # full GPU sweep
fusedopt-bench --optimizer adamw --dtype bfloat16 --size 64M --impl fusedopt,torch-fused --csv out.csv
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import sys

import torch

import fusedopt
from fusedopt.bench import report, workloads
from fusedopt.bench.implementations import IMPLEMENTATIONS
from fusedopt.bench.runner import Case, run_case
from fusedopt.bench.traffic import OPTIMIZERS

# Option variants benchmarked per optimizer: the default and each option that adds a state tensor.
VARIANTS = {
    "adam": [{}, {"amsgrad": True}],
    "adamw": [{}, {"amsgrad": True}],
    "rmsprop": [{}, {"centered": True}, {"momentum": 0.9}],
    "adagrad": [{}],
}
DTYPES = ("float32", "bfloat16")
QUICK_IMPLEMENTATIONS = ("fusedopt-cpu", "torch-forloop", "torch-foreach", "torch-fused", "roofline-stream")


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_size(text: str) -> int:
    """'64M' -> 67108864; plain integers are element counts."""
    text = text.strip().upper()
    multiplier = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if multiplier > 1 else text
    if not digits.isdigit() or int(digits) <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: expected a positive count like 1048576 or 64M")
    return int(digits) * multiplier


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusedopt-bench",
        description="Optimizer step throughput of fusedopt vs torch.optim and other libraries, with the % of a "
        "roofline measured in the same run on the same device.",
    )
    parser.add_argument("--quick", action="store_true", help="CPU AdamW float32 comparison, under 60 seconds")
    parser.add_argument("--device", type=_csv_list, help="cpu and/or cuda (default: every available device)")
    parser.add_argument("--optimizer", type=_csv_list, help=f"any of {', '.join(OPTIMIZERS)} (default: all)")
    parser.add_argument("--dtype", type=_csv_list, help=f"any of {', '.join(DTYPES)} (default: both)")
    parser.add_argument(
        "--impl",
        "--backend",
        dest="impl",
        type=_csv_list,
        help="implementations (or backends) by name or prefix, e.g. fusedopt-cpu,torch-fused or fusedopt,torch",
    )
    parser.add_argument("--size", type=_csv_list, help="flat sizes (64M) or workload names (gpt2-small) to keep")
    parser.add_argument("--variants", choices=("default", "all"), default="all", help="option variants to run")
    parser.add_argument("--reps", type=int, help="timed rounds per case (default: 7 on CPU, 20 on GPU)")
    parser.add_argument("--json", metavar="FILE", help="write every row and the run's metadata as JSON")
    parser.add_argument("--csv", metavar="FILE", help="write every row as CSV")
    parser.add_argument("--plot", metavar="FILE.png", help="plot GB/s against size (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def _devices(args) -> list[str]:
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.quick:
        return ["cpu"]
    requested = args.device or available
    for device in requested:
        if device not in ("cpu", "cuda"):
            raise SystemExit(f"fusedopt-bench: error: --device {device!r}: expected cpu or cuda")
        if device not in available:
            raise SystemExit(f"fusedopt-bench: error: --device {device}: no such device on this machine")
    return requested


def _select(names: list[str], wanted: list[str] | None, what: str, allowed) -> list[str]:
    if not wanted:
        return names
    unknown = [w for w in wanted if w not in allowed]
    if unknown:
        raise SystemExit(f"fusedopt-bench: error: unknown {what} {unknown}; expected any of {list(allowed)}")
    return [n for n in names if n in wanted]


def plan_cases(args) -> list[Case]:
    cases = []
    for device in _devices(args):
        optimizers = ["adamw"] if args.quick else _select(list(OPTIMIZERS), args.optimizer, "optimizer", OPTIMIZERS)
        dtypes = ["float32"] if args.quick else _select(list(DTYPES), args.dtype, "dtype", DTYPES)
        loads = workloads.default_workloads(device, args.quick)
        if args.size:
            sizes = {parse_size(s) for s in args.size if s[:1].isdigit()}
            loads = [w for w in loads if w.name in args.size or (w.kind == "flat" and w.numel in sizes)]
        for optimizer in optimizers:
            variants = VARIANTS[optimizer][:1] if (args.quick or args.variants == "default") else VARIANTS[optimizer]
            for options in variants:
                for dtype in dtypes:
                    for workload in loads:
                        cases.append(Case(device, optimizer, dict(options), dtype, workload))
    return cases


def select_implementations(args) -> list:
    wanted = list(QUICK_IMPLEMENTATIONS) if args.quick and not args.impl else args.impl
    if not wanted:
        return list(IMPLEMENTATIONS)
    chosen = [i for i in IMPLEMENTATIONS if any(i.name == w or i.name.startswith(w + "-") for w in wanted)]
    if not chosen:
        raise SystemExit(f"fusedopt-bench: error: --impl {wanted} matches none of {[i.name for i in IMPLEMENTATIONS]}")
    return chosen


def metadata(argv: list[str]) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "fusedopt-bench " + " ".join(argv),
        "fusedopt": fusedopt.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    # The other libraries' versions (None: not installed), read from their package metadata without importing them.
    info["libraries"] = {name: _installed_version(name) for name in ("deepspeed", "apex", "bitsandbytes", "torchao")}
    return info


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    cases = plan_cases(args)
    implementations = select_implementations(args)
    if not cases:
        raise SystemExit("fusedopt-bench: error: the filters leave no case to run")
    rows = []
    progress = report.Progress(len(cases), enabled=not args.no_progress)
    for case in cases:
        progress.update(f"{case.device} {case.variant} {case.dtype} {case.workload.name}")
        reps = args.reps or (20 if case.device == "cuda" else 7)
        rows.extend(run_case(case, implementations, reps))
    progress.close()
    info = metadata(argv)
    print(report.format_table(rows, info))
    if args.json:
        report.write_json(args.json, rows, info)
    if args.csv:
        report.write_csv(args.csv, rows)
    if args.plot:
        report.plot(args.plot, rows, info)
    return 0
