"""Host time of a planned CPU AdamW step over 1,000 tensors of 4 elements (one group) when every grad is present,
and when one or two parameters have no grad at some steps (the patterns below, cycled). Median of 200 steps after
50 of warm-up, each pattern measured in turn in one process.

    python bench/results/2026-11-29-cpu/plan_without_grads.py
"""

import statistics
import time

import torch

import fusedopt

torch.manual_seed(0)
n = 1000
params = [torch.nn.Parameter(torch.randn(4)) for _ in range(n)]
grads = [torch.randn(4) for _ in range(n)]
optimizer = fusedopt.AdamW(params, lr=1e-3, backend="cpu")


def median_us(pattern, reps=200):
    times = []
    for i in range(reps):
        missing = pattern[i % len(pattern)]
        for j, p in enumerate(params):
            p.grad = None if j in missing else grads[j]
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


PATTERNS = {
    "every grad": [()],
    "param 500 without a grad every other step": [(), (500,)],
    "params 10, 990 without a grad in turns": [(), (10,), (990,)],
    "param 500 without a grad one step in 8": [()] * 7 + [(500,)],
}
print(f"torch {torch.__version__}, fusedopt backend {optimizer.backend}, {n} tensors of 4 elements")
for name, pattern in PATTERNS.items():
    median_us(pattern, 50)
    print(f"{name:45} {median_us(pattern):7.1f} us median")
