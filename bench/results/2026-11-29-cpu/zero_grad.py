"""Host time of optimizer.zero_grad() (set_to_none, the default): torch.optim's Python loop against fusedopt's
planned one (NOTE [planned zero_grad] in csrc/common/step_operands.h).

For each parameter set (1,000 tensors of 4 elements in two groups; GPT-2 small's 148 shapes at a 1/64 scale of
their element counts, so that the host part dominates): torch.optim.AdamW(fused=True), fusedopt.AdamW whose step
plan is current (after two steps), and the same fusedopt optimizer with its plans dropped before each call (what
zero_grad costs without a plan: torch.optim's own). Before each timed call every parameter gets a new grad (not
timed), so the call frees them as a training loop's zero_grad does. Interleaved, 300 rounds, median; "cold" runs
each call after two calls of the stream kernel over 1M-element tensors (32 MiB streamed).

    python bench/results/2026-11-29-cpu/zero_grad.py
"""

import statistics
import time

import torch

import fusedopt
from fusedopt import _extensions
from fusedopt.bench import workloads

extension = _extensions.cpu_extension()


def cache_flush(n):
    """fusedopt's stream kernel over four n-element tensors (16 MiB at 1M): what a CPU optimizer step streams."""
    tensors = [torch.randn(n) for _ in range(4)]
    return lambda: extension.stream([tensors[0]], [tensors[1]], [tensors[2]], [tensors[3]], [])


def two_groups(shapes):
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    return params, [{"params": params[::2]}, {"params": params[1::2], "weight_decay": 0.0}]


def give_grads(params):
    for p in params:
        p.grad = torch.empty_like(p)


def optimizers(shapes):
    """name -> (params, zero_grad) for each optimizer over its own copy of the parameter set."""
    made = {}
    for name in ("torch fused", "fusedopt (plan)", "fusedopt (no plan)"):
        params, groups = two_groups(shapes)
        optimizer = torch.optim.AdamW(groups, fused=True) if name == "torch fused" else fusedopt.AdamW(groups)
        for _ in range(2):
            give_grads(params)
            optimizer.step()
        if name == "fusedopt (no plan)":
            zero_grad = lambda optimizer=optimizer: (optimizer._step_plans.clear(), optimizer.zero_grad())  # noqa: E731
        else:
            zero_grad = optimizer.zero_grad
        made[name] = (params, zero_grad)
    return made


gpt2_shapes = [(max(1, numel // 64),) for numel in workloads.gpt2_like().sizes]
streams = [cache_flush(1 << 20), cache_flush(1 << 20)]
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; zero_grad host time, median of 300, us")
for label, shapes in (("1000 x 4 elements", [(4,)] * 1000), (f"GPT-2 small's {len(gpt2_shapes)} shapes", gpt2_shapes)):
    made = optimizers(shapes)
    times = {(name, mode): [] for name in made for mode in ("warm", "cold")}
    for _ in range(300):
        for name, (params, zero_grad) in made.items():
            for mode in ("warm", "cold"):
                give_grads(params)
                if mode == "cold":
                    for stream in streams:
                        stream()
                start = time.perf_counter()
                zero_grad()
                times[name, mode].append(time.perf_counter() - start)
                assert all(p.grad is None for p in params)
    for name in made:
        warm, cold = (statistics.median(times[name, mode]) * 1e6 for mode in ("warm", "cold"))
        print(f"{label:28s} {name:20s} warm {warm:7.1f}   cold {cold:7.1f}")
