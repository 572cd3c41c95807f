"""bf16 AdamW with bf16 state, 64M parameters: round to nearest against stochastic rounding (the hash is the only
difference), next to torch's fused float32 AdamW; interleaved, median of 15 steps each.

Run: python bench/results/2026-11-29-cpu/sr_vs_nearest.py
"""

import statistics
import time

import torch

import fusedopt

N = 64 * 2**20


def main():
    generator = torch.Generator().manual_seed(0)

    def fused(mode):
        p = torch.nn.Parameter(torch.randn(N, generator=generator).bfloat16())
        p.grad = torch.randn(N, generator=generator).bfloat16()
        return fusedopt.AdamW([p], state_dtype=torch.bfloat16, stochastic_rounding=mode == "stochastic")

    p = torch.nn.Parameter(torch.randn(N, generator=generator))
    p.grad = torch.randn(N, generator=generator)
    optimizers = {
        "torch fused fp32": torch.optim.AdamW([p], fused=True),
        "fusedopt bf16, nearest": fused("nearest"),
        "fusedopt bf16, stochastic": fused("stochastic"),
    }
    for optimizer in optimizers.values():
        optimizer.step()
    times = {name: [] for name in optimizers}
    for _ in range(15):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    reference = statistics.median(times["torch fused fp32"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {N:,} parameters, median of 15 interleaved")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28} {median * 1e3:8.2f} ms  {reference / median:5.2f}x torch fused fp32")


if __name__ == "__main__":
    main()
