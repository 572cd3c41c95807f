"""Host time of an optimizer step when the caches are cold (NOTE [cold step] in fusedopt/_step_hooks.py).

Each measured call runs right after two AdamW kernel calls over 1M float32 elements each (32 MiB streamed, as
many steps of a CPU training run do), and once more right after itself (warm); medians of 200 rounds, the first
20 dropped. The optimizers step one element, so what is timed is the host path of a step: torch.optim's wrapper
pieces, fusedopt's step (regular path once, then its step plan) and pieces of it, torch's fused CPU AdamW and
DeepSpeed's CPU Adam when it is installed.

    OMP_NUM_THREADS=1 python bench/results/2026-11-29-cpu/cold_step.py
"""

import statistics
import time

import torch

import fusedopt
from fusedopt import _extensions, _step_plan

extension = _extensions.cpu_extension()


def kernel_call(n):
    """fusedopt's CPU AdamW kernel called directly on n elements (no optimizer)."""
    p, g, m, v, step = torch.randn(n), torch.randn(n), torch.zeros(n), torch.zeros(n), torch.zeros(())
    hyper = dict(lr=[1e-3], beta1=[0.9], beta2=[0.999], weight_decay=[0.01], eps=[1e-8], maximize=[False])
    return lambda: extension.adam(
        [p], [g], [m], [v], [], [step], **hyper, decoupled=[True], group_sizes=[1], amsgrad=False, grad_factor=1.0,
        device_grad_factor=None, found_inf=None, masters=[], param_mode=0, rounding_seed=0,
    )  # fmt: skip


def one_element_step(make):
    param = torch.nn.Parameter(torch.randn(1))
    param.grad = torch.randn(1)
    return make([param]).step


class EmptyOptimizer(torch.optim.Optimizer):
    """A torch.optim optimizer whose step does nothing: what remains is torch.optim's wrapper around a step."""

    def __init__(self):
        super().__init__([torch.zeros(1, requires_grad=True)], {})

    def step(self, closure=None):
        return None


def record_function():
    with torch.autograd.profiler.record_function("Optimizer.step#EmptyOptimizer.step"):
        pass


def grad_mode_switch():
    enabled = torch.is_grad_enabled()
    torch._C._set_grad_enabled(False)
    try:
        return None
    finally:
        torch._C._set_grad_enabled(enabled)


calls = {
    "torch.optim wrapper (empty step)": EmptyOptimizer().step,
    "  record_function alone": record_function,
    "  no_grad decorator alone": torch.no_grad()(lambda: None),
    "  grad mode switch alone": grad_mode_switch,
    "  torch.compiler.disable alone": torch.compiler.disable(lambda: None),
    "fusedopt kernel call (1 element)": kernel_call(1),
    "fusedopt.AdamW step (1 element)": one_element_step(lambda ps: fusedopt.AdamW(ps, backend="cpu")),
    "torch AdamW fused=True (1 element)": one_element_step(lambda ps: torch.optim.AdamW(ps, fused=True)),
    "torch AdamW for-loop (1 element)": one_element_step(lambda ps: torch.optim.AdamW(ps, foreach=False)),
}
# Pieces of fusedopt's planned step, on a one-element AdamW whose plan is made.
planned = fusedopt.AdamW([torch.nn.Parameter(torch.randn(1))], backend="cpu")
planned.param_groups[0]["params"][0].grad = torch.randn(1)
planned.step()
launch = planned._step_plans.newest()._calls[0][0]
calls["  fusedopt plan check (_plan_key)"] = lambda: _step_plan._plan_key(planned)
calls["  fusedopt hyperparameter lists"] = lambda: planned._hyperparameters(launch)
hooked_step = vars(fusedopt._optimizer).get("hooked_step")  # the step wrapper of 28051e1 on
if hooked_step is not None:

    class EmptyHookedOptimizer(EmptyOptimizer):
        @hooked_step
        def step(self, closure=None):
            return None

    calls["fusedopt's wrapper (empty step)"] = EmptyHookedOptimizer().step
try:
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    calls["DeepSpeedCPUAdam (1 element)"] = one_element_step(
        lambda ps: DeepSpeedCPUAdam(ps, adamw_mode=True, weight_decay=0.01, fp32_optimizer_states=False)
    )
except ImportError:
    pass

streams = [kernel_call(1 << 20), kernel_call(1 << 20)]
cold = {name: [] for name in calls}
warm = {name: [] for name in calls}
for _ in range(200):
    for name, call in calls.items():
        for stream in streams:
            stream()
        start = time.perf_counter()
        call()
        cold[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        call()
        warm[name].append(time.perf_counter() - start)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of 180 rounds, microseconds")
for name in calls:
    cold_us, warm_us = (statistics.median(times[name][20:]) * 1e6 for times in (cold, warm))
    print(f"{name:38s} cold {cold_us:7.1f}   warm {warm_us:6.1f}")
