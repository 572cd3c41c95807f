"""Host time of one optimizer step over many tiny tensors: what the CPU spends walking param groups, checking
operands and launching, when the kernels themselves cost next to nothing (issue: under 50 us per 1,000 tensors).

Compares fusedopt with its step plan (NOTE [step plan] in csrc/common/step_operands.h), fusedopt forced onto its
regular path at every step, and torch.optim's fused, foreach and for-loop AdamW, all on two param groups (decay
and no decay) of --tensors parameters of --numel elements. Steps are interleaved across implementations (one step
of each per round, order rotated) and the median of --reps rounds is reported. On CUDA the time is the host time
of step(): nothing waits for the GPU inside the timed call (the queue is drained between rounds, untimed).
With --max-grad-norm every implementation also clips the grads' total norm: fusedopt with its max_grad_norm=
option, torch.optim with torch.nn.utils.clip_grad_norm_ before its step. With --dtensor the parameters and grads
are DTensors sharded over a one-rank mesh, as FSDP2 hands them to an optimizer (the local shard is the whole
tensor, so the kernels do the same work). With --without-grads K, K parameters drawn anew at every round (the same
for every implementation) have no grad at that step, as the experts of a mixture-of-experts layer that got no
tokens: torch.optim skips them, and so do fusedopt's plans.

    python bench/host_overhead.py --device cpu --json bench/results/<date>-cpu/host_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time

import torch

import fusedopt

_MESH = None  # the one-rank device mesh of --dtensor


def _params(count: int, numel: int, device: str, seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    values = [torch.randn(numel, generator=generator).to(device) for _ in range(count)]
    if _MESH is None:
        params = [torch.nn.Parameter(v) for v in values]
        for p in params:
            p.grad = torch.randn_like(p)
        return params
    from torch.distributed.tensor import Shard, distribute_tensor

    params = [torch.nn.Parameter(distribute_tensor(v, _MESH, [Shard(0)])) for v in values]
    for p in params:
        p.grad = distribute_tensor(torch.randn_like(p.to_local()), _MESH, [Shard(0)])
    return params


def _one_rank_mesh(device: str):
    """A one-process group and a one-rank mesh on `device` (as FSDP2 uses; no other process is needed)."""
    import os
    import socket

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    return init_device_mesh(device, (1,))


def _groups(params):
    cut = len(params) * 4 // 5
    return [{"params": params[:cut]}, {"params": params[cut:], "weight_decay": 0.0}]


class _ClipThenStep:
    """torch.optim's way to clip (--max-grad-norm): clip_grad_norm_ over the params, then the step."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        self.optimizer, self.max_norm = optimizer, max_norm
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
        self.optimizer.step()


_MAX_GRAD_NORM = None  # --max-grad-norm


def _fused(ps, **kwargs):
    return fusedopt.AdamW(_groups(ps), max_grad_norm=_MAX_GRAD_NORM, **kwargs)


def _torch(ps, **kwargs):
    optimizer = torch.optim.AdamW(_groups(ps), **kwargs)
    return optimizer if _MAX_GRAD_NORM is None else _ClipThenStep(optimizer, _MAX_GRAD_NORM)


IMPLEMENTATIONS = {
    "fusedopt (step plan)": lambda ps: _fused(ps),
    "fusedopt (regular path)": lambda ps: _fused(ps),
    "fusedopt triton (step plan)": lambda ps: _fused(ps, backend="triton"),
    "fusedopt triton (regular path)": lambda ps: _fused(ps, backend="triton"),
    "torch fused": lambda ps: _torch(ps, fused=True),
    "torch foreach": lambda ps: _torch(ps, foreach=True),
    "torch for-loop": lambda ps: _torch(ps, foreach=False),
}


def _use_cuda_emulation() -> None:
    """Adds rows for backend "cuda" on CPU tensors: the CUDA binding built for the host (NOTE [cuda host emulation]
    in tests/cuda_emulation/fused_cuda_emulated.cpp), its kernels skipped (see --cuda-emulation)."""
    import os
    import sys

    os.environ["FUSEDOPT_EMULATION_SKIP_KERNELS"] = "1"
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from cuda_emulation import EmulatedCudaBackend

    from fusedopt import backends

    backends._REGISTRY["cuda"] = EmulatedCudaBackend()
    IMPLEMENTATIONS["fusedopt cuda (step plan)"] = lambda ps: _fused(ps, backend="cuda")
    IMPLEMENTATIONS["fusedopt cuda (regular path)"] = lambda ps: _fused(ps, backend="cuda")


def _skip_triton_kernel() -> None:
    """Replaces the Triton AdamW kernel by a launcher that does nothing (see --without-triton-kernel)."""
    import importlib

    class NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    importlib.import_module("fusedopt.triton_kernels.adam")._adam_kernel = NoLaunch()


def measure(
    device: str, tensors: int, numel: int, reps: int, warmup: int = 10, interleave: bool = True, without_grads: int = 0
) -> dict:
    runs = {}
    for index, (name, make) in enumerate(IMPLEMENTATIONS.items()):
        params = _params(tensors, numel, device, seed=index)
        try:
            optimizer = make(params)
            optimizer.step()
        except (RuntimeError, ValueError) as error:
            runs[name] = {"status": f"unsupported: {type(error).__name__}: {error}"}
            continue
        regular = name.endswith("(regular path)")
        runs[name] = {"optimizer": optimizer, "regular": regular, "times": [], "params": params}
        runs[name]["grads"] = [p.grad for p in params]
    active = [run for run in runs.values() if "optimizer" in run]
    # Interleaved, each step finds the caches full of the other optimizers' tensors (as after a forward and
    # backward pass); back to back, each finds its own (the best case).
    rounds = [(i, active[i % len(active) :] + active[: i % len(active)]) for i in range(warmup + reps)]
    if not interleave:
        rounds = [(i, [run]) for run in active for i in range(warmup + reps)]
    draw = random.Random(0)
    for round_index, order in rounds:
        missing = set(draw.sample(range(tensors), without_grads))
        for run in order:
            if without_grads:
                for i, (p, grad) in enumerate(zip(run["params"], run["grads"])):
                    p.grad = None if i in missing else grad
            if run["regular"]:
                run["optimizer"]._step_plans.clear()
            start = time.perf_counter()
            run["optimizer"].step()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                run["times"].append(elapsed)
        if device == "cuda":
            torch.cuda.synchronize()
    results = {}
    for name, run in runs.items():
        if "times" not in run:
            results[name] = run
            continue
        median = statistics.median(run["times"])
        quartiles = statistics.quantiles(run["times"], n=4)
        results[name] = {
            "status": "ok",
            "backend": getattr(run["optimizer"], "backend", "torch"),
            "median_us": median * 1e6,
            "iqr_us": (quartiles[2] - quartiles[0]) * 1e6,
            "us_per_1000_tensors": median * 1e6 * 1000 / tensors,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tensors", type=int, default=1000)
    parser.add_argument("--numel", type=int, default=4)
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--back-to-back", action="store_true", help="step each optimizer repeatedly (warm caches)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--dtensor", action="store_true", help="DTensor params and grads on a one-rank mesh (FSDP2)")
    parser.add_argument("--max-grad-norm", type=float, help="clip the grads' total norm too (see above)")
    parser.add_argument(
        "--without-grads", type=int, default=0, help="this many params, drawn anew each round, have no grad"
    )
    parser.add_argument(
        "--without-triton-kernel",
        action="store_true",
        help="CPU only, with TRITON_INTERPRET=1: the triton rows time everything but the kernel itself (the "
        "interpreter would take seconds), i.e. the host work of a step up to the launch",
    )
    parser.add_argument(
        "--cuda-emulation",
        action="store_true",
        help="CPU only: add rows for the CUDA binding built for the host, without its kernels: the binding's host "
        "work of a step (checks, table cache, group rows) up to the launch, what a GPU host does before the driver",
    )
    args = parser.parse_args()
    if args.without_triton_kernel:
        _skip_triton_kernel()
    if args.cuda_emulation:
        _use_cuda_emulation()
    global _MESH, _MAX_GRAD_NORM
    _MAX_GRAD_NORM = args.max_grad_norm
    if args.dtensor:
        _MESH = _one_rank_mesh(args.device)
    results = measure(
        args.device, args.tensors, args.numel, args.reps, interleave=not args.back_to_back,
        without_grads=args.without_grads,
    )  # fmt: skip
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu"
    print(
        f"AdamW step host time, {args.tensors} {'DTensor ' if args.dtensor else ''}tensors of {args.numel} elements "
        f"in 2 param groups{', clipped to a total norm' if args.max_grad_norm else ''}"
        f"{f', {args.without_grads} of them without a grad (drawn anew each round)' if args.without_grads else ''}, "
        f"{args.device} "
        f"({device_name}), torch {torch.__version__}, median of {args.reps} "
        + ("steps back to back (warm caches)" if args.back_to_back else "interleaved rounds (cold caches)")
        + ("; triton rows without the kernel itself" if args.without_triton_kernel else "")
        + ("; cuda rows: the CUDA binding on the host, without its kernels" if args.cuda_emulation else "")
    )
    print(f"{'implementation':32} {'backend':10} {'median us':>10} {'IQR us':>8} {'us / 1000 tensors':>18}")
    for name, row in results.items():
        if row["status"] != "ok":
            print(f"{name:32} {row['status']}")
            continue
        print(f"{name:32} {row['backend']:10} {row['median_us']:10.1f} {row['iqr_us']:8.1f} "
              f"{row['us_per_1000_tensors']:18.1f}")  # fmt: skip
    if args.json:
        meta = dict(vars(args), torch=torch.__version__, device_name=device_name, date=time.strftime("%Y-%m-%d %H:%M"))
        with open(args.json, "w") as file:
            json.dump({"meta": meta, "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
