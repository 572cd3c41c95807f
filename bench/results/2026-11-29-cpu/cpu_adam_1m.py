"""One process, three step functions interleaved for 200 rounds (median of the last 180): fusedopt's CPU AdamW,
DeepSpeedCPUAdam (state in the param's dtype) and fusedopt's stream kernel (the same loads and stores, one add per
element), each on its own float32 tensor of N elements (default 1M). Needs `pip install deepspeed`.

    python bench/results/2026-11-29-cpu/cpu_adam_1m.py [N]          (OMP_NUM_THREADS=1 for one thread)
"""

import statistics
import sys
import time

import torch
from deepspeed.ops.adam import DeepSpeedCPUAdam

import fusedopt
from fusedopt import _extensions

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 20


def parameter():
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n)
    return p


ours, theirs, streamed = parameter(), parameter(), parameter()
fused = fusedopt.AdamW([ours], backend="cpu")
deepspeed = DeepSpeedCPUAdam([theirs], adamw_mode=True, fp32_optimizer_states=False)
extension = _extensions.cpu_extension()
states = torch.zeros(n), torch.zeros(n)
runs = {
    "fusedopt": fused.step,
    "deepspeed": deepspeed.step,
    "stream": lambda: extension.stream([streamed], [streamed.grad], [states[0]], [states[1]], []),
}
times = {name: [] for name in runs}
for _ in range(200):
    for name, step in runs.items():
        start = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - start)
medians = {name: statistics.median(values[20:]) * 1e3 for name, values in times.items()}
summary = ", ".join(f"{name} {ms:.3f} ms" for name, ms in medians.items())
ratio = medians["deepspeed"] / medians["fusedopt"]
print(f"{n} float32 elements, {torch.get_num_threads()} threads: {summary}; deepspeed / fusedopt time {ratio:.2f}")
