"""Turns a fusedopt-bench JSON file into the markdown summary committed under bench/results/.

    python bench/summarize.py results.json > summary.md
    python bench/summarize.py results.json --plot results.png     # redraws the plot from the JSON

For every case it lists each implementation's median time, GB/s, % of roofline and its speed relative to
torch.optim's fused kernel (or foreach, where torch has no fused one), from the rows as measured.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _cell(value, spec: str) -> str:
    """A measured value, or "-" where the row has none (8-bit optimizers report no GB/s; launches are counted on
    GPUs only)."""
    return "-" if value is None else format(value, spec)


def summarize(document: dict) -> str:
    meta = document["metadata"]
    lines = [
        f"# fusedopt-bench {meta['date']}",
        "",
        f"- device: {meta.get('gpu') or meta['cpu']} ({meta['cpu_threads']} CPU threads)",
        f"- versions: fusedopt {meta['fusedopt']}, torch {meta['torch']}, triton {meta.get('triton')}, "
        f"CUDA {meta.get('cuda')}, python {meta['python']}",
        "- other libraries: "
        + (
            ", ".join(f"{name} {version or 'not installed'}" for name, version in meta.get("libraries", {}).items())
            or "not recorded"
        ),
        f"- command: `{meta['command']}`",
        "- GB/s counts the bytes a single-pass step must move (fusedopt/bench/traffic.py); % roofline is against "
        "the fastest roofline row of the same case, measured in the same run",
        "",
    ]
    cases = defaultdict(list)
    for row in document["rows"]:
        cases[(row["device"], row["variant"], row["dtype"], row["workload"])].append(row)
    for (device, variant, dtype, workload), rows in cases.items():
        timed = {r["implementation"]: r for r in rows if r["median_ms"]}
        baseline = timed.get("torch-fused") or timed.get("torch-foreach")
        lines += [
            f"## {device} {variant} {dtype} {workload} ({rows[0]['numel']:,} params in {rows[0]['tensors']} tensors)",
            "",
            "| implementation | median ms | GB/s | % roofline | vs torch | extra MB | launches | status |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            if r["median_ms"] is None:
                lines.append(f"| {r['implementation']} | | | | | | | {r['status']} |")
                continue
            speedup = f"{baseline['median_ms'] / r['median_ms']:.2f}x" if baseline else ""
            lines.append(
                f"| {r['implementation']} | {r['median_ms']:.3f} | {_cell(r['gb_per_s'], '.1f')} | "
                f"{_cell(r['pct_of_roofline'], '.1f')} | {speedup} | {_cell(r['peak_extra_mb'], '.1f')} | "
                f"{_cell(r.get('launches'), 'd')} | {r['status']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[2] == "--plot":
        from fusedopt.bench import report

        rows, info = report.read_json(sys.argv[1])
        report.plot(sys.argv[3], rows, info)
        return 0
    with open(sys.argv[1]) as f:
        print(summarize(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
