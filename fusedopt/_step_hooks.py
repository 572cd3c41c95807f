"""The wrapper around every fusedopt optimizer's step: what torch.optim wraps around a step, in less host time.

NOTE [cold step]: torch.optim.Optimizer wraps each optimizer class's step (profile_hook_step, installed by
_patch_step_function) in a profiler record_function, its step hooks and a marker call for the memory profiler;
torch's own optimizers add no_grad (and fusedopt torch.compiler.disable). On a CPU, a step streams the optimizer's
parameters, grads and state through the caches, so the next step starts with caches that hold none of the Python
objects a step touches: measured on this project's 2-core CPU machine (bench/results/2026-11-29-cpu/cold_step.txt),
an empty torch.optim step costs 6 us when the caches are warm and 59 us when two 1M-element kernel calls ran
before it, of which record_function alone is 45 us; a no_grad decorator adds 20 us and torch.compiler.disable 13
us. Next to an AdamW step over 1M float32 elements (0.3 ms) that was most of the difference to DeepSpeed's CPU
Adam at that size (bench/NOTES.md). This wrapper does everything the torch.optim wrapper does, with the same results:
- the step pre hooks (global, then the optimizer's), which may replace the arguments, and the post hooks (the
  optimizer's, then global), around the step;
- `_optimizer_step_code()` after the step, the marker torch's memory profiler looks for;
- the record_function label "Optimizer.step#<class name>.step", only while a profiler is recording
  (torch.autograd._profiler_enabled, the C++ profiler state, so on-demand tracing sees it too): with none, a
  record_function records nothing;
- the step body under no grad (a direct switch of the grad mode, not the decorator's several Python frames);
- inside torch.compile (Dynamo traces this wrapper), the same wrapper as a torch.compiler.disable'd function, so
  the fused step runs as it is behind a graph break: Dynamo cannot trace the kernels' extension calls and would
  only add compile time and guards on the step plan's Python state.
The wrapped step is marked `hooked`, so _patch_step_function leaves it as it is. The wrapper reads a few private
names of torch.optim (the global hook dicts, the marker); on a torch without one of them, the step is left to
torch.optim's own wrapper (with no_grad and torch.compiler.disable around it, as before), slower but the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch.optim import optimizer as torch_optimizer


def _reads_torch_optim_internals() -> bool:
    """Whether this torch has the private names the wrapper reads (torch 2.4 to 2.14 have them all)."""
    return (
        hasattr(torch_optimizer, "_global_optimizer_pre_hooks")
        and hasattr(torch_optimizer, "_global_optimizer_post_hooks")
        and hasattr(torch_optimizer.Optimizer, "_optimizer_step_code")
        and hasattr(torch.autograd, "_profiler_enabled")
        and hasattr(torch._C, "_set_grad_enabled")
    )


def profiler_recording() -> bool:
    """Whether a profiler records now (the C++ profiler state, so on-demand tracing counts); True on a torch that
    cannot tell, so that callers then take torch.optim's labelled path."""
    enabled = getattr(torch.autograd, "_profiler_enabled", None)
    return True if enabled is None else enabled()


def hooked_step(step: Callable[..., Any]) -> Callable[..., Any]:
    """`step` (a method taking the optimizer and torch.optim's step arguments) wrapped as NOTE [cold step] says."""
    if not _reads_torch_optim_internals():
        return torch.compiler.disable(torch.no_grad()(step))  # not `hooked`: torch.optim wraps it

    def with_hooks(*args: Any, **kwargs: Any) -> Any:
        optimizer = args[0]
        for pre_hook in chain(
            torch_optimizer._global_optimizer_pre_hooks.values(), optimizer._optimizer_step_pre_hooks.values()
        ):
            result = pre_hook(optimizer, args, kwargs)
            if result is not None:
                if isinstance(result, tuple) and len(result) == 2:
                    args, kwargs = result
                else:  # torch.optim's message
                    raise RuntimeError(
                        f"{step} must return None or a tuple of (new_args, new_kwargs), but got {result}."
                    )
        grad_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            out = step(*args, **kwargs)
        finally:
            torch._C._set_grad_enabled(grad_enabled)
        optimizer._optimizer_step_code()
        for post_hook in chain(
            optimizer._optimizer_step_post_hooks.values(), torch_optimizer._global_optimizer_post_hooks.values()
        ):
            post_hook(optimizer, args, kwargs)
        return out

    def labelled(*args: Any, **kwargs: Any) -> Any:
        if not profiler_recording():
            return with_hooks(*args, **kwargs)
        with torch.autograd.profiler.record_function(f"Optimizer.step#{type(args[0]).__name__}.step"):
            return with_hooks(*args, **kwargs)

    outside_graphs = torch.compiler.disable(labelled)

    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return outside_graphs(*args, **kwargs)
        return labelled(*args, **kwargs)

    wrapper.hooked = True  # torch.optim.Optimizer._patch_step_function: already wrapped
    return wrapper
