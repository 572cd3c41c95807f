"""Training check for low-precision modes: does bfloat16 training with fusedopt reach float32's loss?

An MLP student learns a fixed random MLP teacher on a synthetic regression task (no download), with AdamW and
a warmup + cosine schedule, six ways: float32; bfloat16 parameters rounded to nearest (torch's behaviour);
bfloat16 with stochastic rounding and float32 state; the same with bfloat16 state (14 bytes per parameter per
step: what halving the state costs); bfloat16 with a float32 master and float32 state; bfloat16 with the master
kept as an int16 remainder. Writes the loss curves (PNG) and the numbers (JSON).

    python bench/training_check.py --out bench/results/<date>-training    # a few seconds on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch

import fusedopt

RUNS = {
    "float32": dict(dtype=torch.float32, options={}),
    "bf16 round-to-nearest": dict(dtype=torch.bfloat16, options={}),
    "bf16 stochastic rounding, fp32 state": dict(
        dtype=torch.bfloat16, options=dict(stochastic_rounding=True, state_dtype=torch.float32)
    ),
    "bf16 stochastic rounding, bf16 state": dict(dtype=torch.bfloat16, options=dict(stochastic_rounding=True)),
    "bf16 + fp32 master, fp32 state": dict(
        dtype=torch.bfloat16, options=dict(master_weights=True, state_dtype=torch.float32)
    ),
    "bf16 + int16 remainder, fp32 state": dict(
        dtype=torch.bfloat16, options=dict(master_weights="remainder", state_dtype=torch.float32)
    ),
}


def _mlp(inputs: int, hidden: int, outputs: int, seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden), torch.nn.GELU(),
        torch.nn.Linear(hidden, outputs),
    )  # fmt: skip


def train(dtype: torch.dtype, options: dict, steps: int, seed: int = 0) -> list[float]:
    """Per-step training loss (float32 mean squared error) of one run; the data are the same for every run."""
    teacher = _mlp(32, 64, 8, seed=1000 + seed)
    student = _mlp(32, 128, 8, seed=seed).to(dtype)
    optimizer = fusedopt.AdamW(student.parameters(), lr=2e-3, weight_decay=0.01, backend="cpu", **options)
    warmup = steps // 10

    def warmup_then_cosine(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / (steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_cosine)
    data = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(256, 32, generator=data)
        with torch.no_grad():
            y = teacher(x)
        loss = torch.nn.functional.mse_loss(student(x.to(dtype)).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def final_loss(losses: list[float], window: int = 50) -> float:
    """Mean of the last `window` steps: the end of training, smoothed over batches."""
    return sum(losses[-window:]) / window


def run(steps: int = 600) -> dict:
    curves = {name: train(spec["dtype"], spec["options"], steps) for name, spec in RUNS.items()}
    reference = final_loss(curves["float32"])
    return {
        "steps": steps,
        "final_loss": {name: final_loss(c) for name, c in curves.items()},
        "relative_to_float32": {name: final_loss(c) / reference - 1 for name, c in curves.items()},
        "curves": curves,
    }


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name, curve in result["curves"].items():
        smooth = [sum(curve[max(0, i - 24) : i + 1]) / len(curve[max(0, i - 24) : i + 1]) for i in range(len(curve))]
        change = result["relative_to_float32"][name]
        axis.plot(smooth, label=f"{name} (final {result['final_loss'][name]:.3g}, {change:+.1%})")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (25-step mean)")
    axis.set_title("fusedopt.AdamW, MLP on a synthetic teacher task (CPU)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for training.json and training.png")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    result = run(args.steps)
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(result, f)
    plot(result, os.path.join(args.out, "training.png"))
    for name, loss in result["final_loss"].items():
        print(f"{name:<40} final loss {loss:.5f}  {result['relative_to_float32'][name]:+.2%} vs float32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
