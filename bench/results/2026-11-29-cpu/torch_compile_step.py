"""Compile time (each mode in a fresh process) of a torch.compile'd function that steps fusedopt.AdamW and its
scheduler, with step() behind torch.compiler.disable (as shipped) and traced (the undecorated function), and
whether both match eager steps."""

import sys
import time

import torch

import fusedopt
from fusedopt._optimizer import FusedOptimizer

traced_step = FusedOptimizer.step.__wrapped__  # the step without torch.compiler.disable


def run(traced: bool) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    optimizer, eager = fusedopt.AdamW(params, lr=1e-2), fusedopt.AdamW(twins, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
    eager_scheduler = torch.optim.lr_scheduler.StepLR(eager, 1, 0.5)

    @torch.compile
    def compiled_step():
        (traced_step(optimizer) if traced else optimizer.step())
        scheduler.step()

    for i in range(4):
        for p, q in zip(params, twins):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        start = time.perf_counter()
        compiled_step()
        elapsed = time.perf_counter() - start
        eager.step()
        eager_scheduler.step()
        print(f"{'traced' if traced else 'disabled'} step {i}: {elapsed:.2f} s")
    same = all(torch.equal(p, q) for p, q in zip(params, twins))
    print(f"{'traced' if traced else 'disabled'}: bit for bit the eager steps: {same}")


# One mode per process (python torch_compile_step.py disabled|traced), so each pays the first compile in full.
run(traced=sys.argv[1] == "traced")
