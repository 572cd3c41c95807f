"""Output of the benchmark: progress bar, terminal table, JSON, CSV and the GB/s-vs-size plot."""

from __future__ import annotations

import csv
import json
import sys
import time

from fusedopt.bench.runner import Row

JSON_SCHEMA_VERSION = 1
CSV_FIELDS = [
    "device", "optimizer", "variant", "dtype", "workload", "numel", "tensors", "implementation", "group", "status",
    "bytes_per_step", "reps", "median_ms", "p25_ms", "p75_ms", "params_per_s", "gb_per_s", "pct_of_roofline",
    "peak_extra_mb", "launches",
]  # fmt: skip


class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal, or forced by enabled=True)."""

    def __init__(self, total: int, enabled: bool = True, width: int = 30) -> None:
        self.total, self.done, self.width = total, 0, width
        self.enabled = enabled and sys.stderr.isatty()
        self.started = time.monotonic()

    def update(self, label: str) -> None:
        if self.enabled:
            filled = self.width * self.done // max(self.total, 1)
            elapsed = time.monotonic() - self.started
            bar = "#" * filled + "." * (self.width - filled)
            sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {elapsed:5.0f}s {label[:60]:<60}")
            sys.stderr.flush()
        self.done += 1

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * (self.width + 80) + "\r")
            sys.stderr.flush()


def _fmt(value, spec: str) -> str:
    """`value` formatted by `spec`, or "-" in the same width (the digits before the spec's point or type)."""
    if value is not None:
        return format(value, spec)
    width = spec.split(".")[0].rstrip("dfs")
    return format("-", f">{width}") if width else "-"


def format_table(rows: list[Row], info: dict) -> str:
    header = f"{'case':<44} {'implementation':<18} {'median ms':>10} {'IQR ms':>13} {'Mparam/s':>9} " \
             f"{'GB/s':>7} {'%roof':>6} {'extra MB':>9}  status"  # fmt: skip
    lines = [f"fusedopt-bench  {info['date']}  torch {info['torch']}  {info.get('gpu') or info['cpu']}", header]
    lines.append("-" * len(header))
    previous = None
    for r in rows:
        case = f"{r.device} {r.variant} {r.dtype} {r.workload}"
        if previous is not None and case != previous:
            lines.append("")
        previous = case
        iqr = "-" if r.p25_ms is None else f"{r.p25_ms:.2f}-{r.p75_ms:.2f}"
        lines.append(
            f"{case[:44]:<44} {r.implementation:<18} {_fmt(r.median_ms, '10.2f')} {iqr:>13} "
            f"{_fmt(r.params_per_s and r.params_per_s / 1e6, '9.0f')} {_fmt(r.gb_per_s, '7.1f')} "
            f"{_fmt(r.pct_of_roofline, '6.1f')} {_fmt(r.peak_extra_mb, '9.1f')}  {r.status}"
        )
    return "\n".join(lines)


def write_json(path: str, rows: list[Row], info: dict) -> None:
    with open(path, "w") as f:
        json.dump({"schema": JSON_SCHEMA_VERSION, "metadata": info, "rows": [r.as_dict() for r in rows]}, f, indent=1)


def write_csv(path: str, rows: list[Row]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(r.as_dict())


def read_json(path: str) -> tuple[list[Row], dict]:
    with open(path) as f:
        document = json.load(f)
    return [Row(**row) for row in document["rows"]], document["metadata"]


def plot(path: str, rows: list[Row], info: dict) -> None:
    """GB/s against size for the flat workloads, one line per implementation, the roofline dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("fusedopt-bench: --plot needs matplotlib (pip install matplotlib)") from None
    cases = sorted({(r.device, r.variant, r.dtype) for r in rows if r.tensors == 1 and r.gb_per_s})
    if not cases:
        raise SystemExit("fusedopt-bench: --plot: no single-tensor (flat) rows with timings to plot")
    columns = min(4, len(cases))
    rows_of_plots = -(-len(cases) // columns)
    figure, axes = plt.subplots(rows_of_plots, columns, figsize=(5.5 * columns, 4.2 * rows_of_plots), squeeze=False)
    for axis in axes.flat[len(cases) :]:
        axis.set_visible(False)
    for axis, (device, variant, dtype) in zip(axes.flat, cases):
        selected = [r for r in rows if (r.device, r.variant, r.dtype) == (device, variant, dtype) and r.tensors == 1]
        for name in dict.fromkeys(r.implementation for r in selected):
            points = sorted((r.numel, r.gb_per_s) for r in selected if r.implementation == name and r.gb_per_s)
            if not points:
                continue
            roofline = name.startswith("roofline")
            axis.plot(*zip(*points), "--" if roofline else "-o", label=name, color="black" if roofline else None,
                      markersize=4)  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_xlabel("parameters (one tensor)")
        axis.set_ylabel("effective GB/s (exact bytes per step / time)")
        axis.set_title(f"{device} {variant} {dtype}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"fusedopt-bench {info['date'][:10]}, torch {info['torch']}, {info.get('gpu') or info['cpu']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
