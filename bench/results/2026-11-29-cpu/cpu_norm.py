"""NOTE [cpu norms]: the total gradient norm on CPU grads, torch's way (what torch.nn.utils.clip_grad_norm_ computes:
torch._foreach_norm, then the norm of those) against fusedopt.clip.total_norm (one pass in the CPU extension),
timed interleaved (median of 30), and the accuracy of both against float64 on one large float32 grad.

Run: python bench/results/2026-11-29-cpu/cpu_norm.py
"""

import statistics
import time

import torch

from fusedopt import clip


def torch_total_norm(grads):
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)


def main():
    generator = torch.Generator().manual_seed(0)
    cases = {
        "1,000 x 4 float32": [torch.randn(4, generator=generator) for _ in range(1000)],
        "200 x 64K float32": [torch.randn(65536, generator=generator) for _ in range(200)],
        "1 x 16M float32": [torch.randn(16_000_000, generator=generator)],
        "1 x 16M bfloat16": [torch.randn(16_000_000, generator=generator).bfloat16()],
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms of 30 interleaved rounds")
    print(f"{'grads':<20} {'torch':>9} {'fusedopt':>9} {'speed-up':>9}")
    for name, grads in cases.items():
        times = {"torch": [], "fusedopt": []}
        for _ in range(30):
            for impl, fn in (("torch", torch_total_norm), ("fusedopt", clip.total_norm)):
                start = time.perf_counter()
                fn(grads)
                times[impl].append(time.perf_counter() - start)
        t, f = (statistics.median(times[k]) * 1e3 for k in ("torch", "fusedopt"))
        print(f"{name:<20} {t:9.3f} {f:9.3f} {t / f:8.1f}x")
    grad = cases["1 x 16M float32"][0]
    exact = torch.linalg.vector_norm(grad.double()).item()
    print(
        f"one float32 grad of 16M elements: float64 norm {exact:.4f}, torch {torch_total_norm([grad]).item():.4f}, "
        f"fusedopt {clip.total_norm([grad]).item():.4f}"
    )


if __name__ == "__main__":
    main()
