"""Host cost of the Triton backend's operand check (check_operands, on every regular step; planned steps skip it)
for 1,000 tensors of 4 elements: AdamW's columns (params, grads, exp_avg, exp_avg_sq), and params and grads alone.
Medians of 300 calls, the two alternated over 5 rounds."""

import os
import statistics
import time

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from fusedopt.triton_kernels import _launch as multi_tensor  # noqa: E402

params = [torch.randn(4) for _ in range(1000)]
grads = [torch.randn(4) for _ in params]
states = [[torch.zeros(4) for _ in params] for _ in range(2)]


def median_us(fn, reps=300):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


rounds = []
for _ in range(5):
    rounds.append(median_us(lambda: multi_tensor.check_operands(params, grads, states)))
    rounds.append(median_us(lambda: multi_tensor.check_operands(params, grads, [])))
print("check_operands, params + grads + 2 states, us per call:", [round(r) for r in rounds[0::2]])
print("check_operands, params + grads only, us per call:", [round(r) for r in rounds[1::2]])
