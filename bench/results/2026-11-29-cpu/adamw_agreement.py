"""How closely float32 AdamW implementations agree with torch.optim.AdamW's for-loop (the numeric spec) and with
a float64 run of it: 1M parameters, 5 steps of random grads, weight decay 0, on this CPU. Needs
`pip install deepspeed`.

    python bench/results/2026-11-29-cpu/adamw_agreement.py
"""

import torch
from deepspeed.ops.adam import DeepSpeedCPUAdam

import fusedopt

torch.manual_seed(0)
n = 1 << 20
start = torch.randn(n)
grads = [torch.randn(n) for _ in range(5)]


def run(make, dtype=torch.float32):
    param = torch.nn.Parameter(start.to(dtype).clone())
    optimizer = make([param])
    for grad in grads:
        param.grad = grad.to(dtype).clone()
        optimizer.step()
    return param.detach()


spec = run(lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.0, foreach=False))
exact = run(lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.0, foreach=False), torch.float64)
implementations = {
    "torch for-loop": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.0, foreach=False),
    "torch fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.0, fused=True),
    "fusedopt cpu": lambda ps: fusedopt.AdamW(ps, lr=1e-3, weight_decay=0.0, backend="cpu"),
    "deepspeed cpu": lambda ps: DeepSpeedCPUAdam(
        ps, lr=1e-3, weight_decay=0.0, adamw_mode=True, fp32_optimizer_states=False
    ),
}
print(f"torch {torch.__version__}, {n} float32 parameters, 5 AdamW steps")
for name, make in implementations.items():
    out = run(make)
    differing = int((out != spec).sum())
    error = (out.double() - exact).abs()
    print(f"{name:15} differs from the for-loop in {differing:7d} elements ({100 * differing / n:5.2f}%); "
          f"against float64: max {error.max():.3e}, mean {error.mean():.4e}")  # fmt: skip
