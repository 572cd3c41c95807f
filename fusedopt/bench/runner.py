"""Runs one benchmark case: every implementation on the same parameters' shapes, timed interleaved.

NOTE [timing]: shared machines drift, so implementations are timed round-robin (one step of each per round,
`reps` rounds) and reported as medians with the interquartile range. GPU steps are timed with CUDA events after
warm-up; when a case is smaller than several L2 caches, each implementation rotates over enough replicas of its
parameters that every timed step starts from DRAM, not from a warm L2. CPU steps are timed with perf_counter
after a read of a clean buffer twice the size of the last-level cache, so every implementation starts cold and
none pays for writing back the dirty lines its predecessor left.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from fusedopt.bench.implementations import Implementation, Unavailable, unsupported
from fusedopt.bench.traffic import num_state_tensors, step_traffic
from fusedopt.bench.workloads import Workload

WARMUP_STEPS = 2
# The replicas' data should exceed the L2 cache this many times over (H100/H200: 50/60 MB of L2).
L2_MULTIPLE = 4


@dataclass
class Case:
    device: str
    optimizer: str
    options: dict
    dtype: str
    workload: Workload

    @property
    def variant(self) -> str:
        flags = [k if v is True else f"{k}={v}" for k, v in sorted(self.options.items()) if v not in (False, 0, None)]
        return self.optimizer + (f"[{','.join(flags)}]" if flags else "")


@dataclass
class Row:
    device: str
    optimizer: str
    variant: str
    dtype: str
    workload: str
    numel: int
    tensors: int
    implementation: str
    group: str
    status: str
    bytes_per_step: int
    reps: int = 0
    median_ms: float | None = None
    p25_ms: float | None = None
    p75_ms: float | None = None
    params_per_s: float | None = None
    gb_per_s: float | None = None
    pct_of_roofline: float | None = None
    peak_extra_mb: float | None = None
    launches: int | None = None  # GPU kernels one step launches (torch.profiler); None on CPU
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def make_params(workload: Workload, dtype: torch.dtype, device: str, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(seed)
    params = []
    for shape in workload.shapes:
        p = torch.nn.Parameter(torch.randn(shape, dtype=dtype, device=device, generator=generator))
        p.grad = torch.randn(shape, dtype=dtype, device=device, generator=generator)
        params.append(p)
    return params


def bytes_needed(case: Case) -> int:
    """Memory one implementation needs: params, grads and state, plus two tensors' worth for temporaries."""
    element = torch.empty((), dtype=getattr(torch, case.dtype)).element_size()
    return case.workload.numel * element * (2 + num_state_tensors(case.optimizer, case.options) + 2)


def free_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


@contextlib.contextmanager
def _quiet_stderr():
    """Silences file descriptor 2: the profiler's C++ side logs its start and stop there, past Python."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_extra_bytes(step) -> int:
    """Peak of the bytes the step allocated and had not yet freed (torch's CPU allocator keeps no peak counter).

    From the profiler: each operator's own net allocation counts at its start when positive and at its end
    when negative (a parent operator is charged the frees of its children's temporaries).
    """
    with (
        _quiet_stderr(),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        step()
    timeline = []
    for event in prof.events():
        change = event.self_cpu_memory_usage
        if change:
            timeline.append((event.time_range.start if change > 0 else event.time_range.end, change))
    running = peak = 0
    for _, change in sorted(timeline):
        running += change
        peak = max(peak, running)
    return peak


def _cuda_peak_extra_bytes(step, device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def count_kernels(events) -> int:
    """The GPU kernels among a profile's device events (memory copies and sets are not kernels)."""
    return sum(
        1
        for e in events
        if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset"))
    )


def _cuda_launches_per_step(step, device) -> int:
    torch.cuda.synchronize(device)
    with _quiet_stderr(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize(device)
    return count_kernels(prof.events())


def _replicas_needed(case: Case, traffic_bytes: int) -> int:
    if case.device != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or (64 << 20)
    return max(1, -(-L2_MULTIPLE * l2 // max(traffic_bytes, 1)))


def run_case(case: Case, implementations: list[Implementation], reps: int, seed: int = 0) -> list[Row]:
    dtype = getattr(torch, case.dtype)
    traffic = step_traffic(case.optimizer, case.options, case.workload.sizes, dtype)
    base = dict(
        device=case.device,
        optimizer=case.optimizer,
        variant=case.variant,
        dtype=case.dtype,
        workload=case.workload.name,
        numel=case.workload.numel,
        tensors=len(case.workload.shapes),
        bytes_per_step=traffic.total_bytes,
    )
    replicas = _replicas_needed(case, traffic.total_bytes)
    rows, steppers = [], {}
    needed = bytes_needed(case) * replicas
    for impl in implementations:
        row = Row(implementation=impl.name, group=impl.group, status="ok", **base)
        rows.append(row)
        free = free_bytes(case.device)
        if needed > 0.8 * free:
            row.status = f"skipped: needs {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
            continue
        try:
            steppers[impl.name] = [
                impl.build(case.optimizer, dict(case.options), make_params(case.workload, dtype, case.device, seed))
                for _ in range(replicas)
            ]
        except Unavailable as why:
            row.status = str(why)
        except (RuntimeError, TypeError, ValueError) as error:  # a library refusing this case's options
            row.status = unsupported(error)
    timings = _time_interleaved(steppers, reps, case.device)
    counted = {impl.name: impl.counted_bytes for impl in implementations}
    cuda = case.device == "cuda"
    for row in rows:
        if row.implementation not in timings:
            continue
        samples = timings[row.implementation]
        median = statistics.median(samples)
        row.reps = len(samples)
        row.median_ms, row.p25_ms, row.p75_ms = quartiles_ms(samples)
        row.params_per_s = case.workload.numel / median
        if counted[row.implementation]:
            row.gb_per_s = traffic.total_bytes / median / 1e9
        step = steppers[row.implementation][0]
        peak = _cuda_peak_extra_bytes(step, torch.device("cuda")) if cuda else _cpu_peak_extra_bytes(step)
        row.peak_extra_mb = peak / 2**20
        # Launches matter where there are many tensors; profiling every row would cost the GPU run its time.
        if cuda and len(case.workload.shapes) > 1 and row.group in ("fusedopt", "torch"):
            row.launches = _cuda_launches_per_step(step, torch.device("cuda"))
    roofline = max((r.gb_per_s for r in rows if r.group == "roofline" and r.gb_per_s), default=None)
    for row in rows:
        if roofline and row.gb_per_s:
            row.pct_of_roofline = 100.0 * row.gb_per_s / roofline
    steppers.clear()
    return rows


def _last_level_cache_bytes() -> int:
    sizes = []
    for index in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            break
        sizes.append(int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1) if text[-1] in "KM" else int(text))
    return max(sizes, default=64 << 20)


class _CacheFlusher:
    """Reads a clean buffer twice the last-level cache before each timed CPU step, so that no step pays for
    writing back the dirty lines of the step timed before it (NOTE [timing])."""

    def __init__(self) -> None:
        self.buffer = torch.ones(2 * _last_level_cache_bytes() // 4)

    def __call__(self) -> None:
        self.buffer.sum()


def quartiles_ms(samples: list[float]) -> tuple[float, float, float]:
    """Median, 25th and 75th percentile of step times in seconds, in milliseconds (as every report shows them)."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[len(ordered) // 4] * 1e3, ordered[(3 * len(ordered)) // 4] * 1e3


def _time_interleaved(steppers: dict, reps: int, device: str) -> dict[str, list[float]]:
    cuda = device == "cuda"
    flush = None if cuda else _CacheFlusher()
    for replicas in steppers.values():
        for step in replicas:
            for _ in range(WARMUP_STEPS):
                step()
    if cuda:
        torch.cuda.synchronize()
    timings: dict[str, list[float]] = {name: [] for name in steppers}
    for rep in range(reps):
        for name, replicas in steppers.items():
            step = replicas[rep % len(replicas)]
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                end.synchronize()
                timings[name].append(start.elapsed_time(end) / 1e3)
            else:
                flush()
                begin = time.perf_counter()
                step()
                timings[name].append(time.perf_counter() - begin)
    return timings
