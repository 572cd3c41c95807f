"""Step time of fusedopt's CPU kernel with and without floating-point contraction (NOTE [no contraction]).

Run once per build, alternating: PYTHONPATH=<tree> python fp_contract.py <label>. 4M elements (AdamW); each
number is the median of 30 steps after 3 warm-up steps, in milliseconds.
"""

import statistics
import sys
import time

import torch

import fusedopt

torch.manual_seed(0)
CASES = [
    (
        "bf16 params, bf16 state, stochastic rounding",
        torch.bfloat16,
        dict(stochastic_rounding=True, state_dtype=torch.bfloat16),
    ),
    (
        "bf16 params, remainder master, f32 state",
        torch.bfloat16,
        dict(master_weights="remainder", state_dtype=torch.float32),
    ),
    ("bf16 params and state", torch.bfloat16, dict()),
    ("f32", torch.float32, dict()),
]
row = []
for _, dtype, kwargs in CASES:
    p = torch.nn.Parameter(torch.randn(4 << 20, dtype=dtype))
    p.grad = torch.randn_like(p)
    optimizer = fusedopt.AdamW([p], lr=1e-3, **kwargs)
    for _ in range(3):
        optimizer.step()
    times = []
    for _ in range(30):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    row.append(f"{statistics.median(times) * 1e3:7.3f}")
print(f"{sys.argv[1]:<22}" + "  ".join(row), flush=True)
