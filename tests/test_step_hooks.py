"""fusedopt's step wrapper (fusedopt/_step_hooks.py, NOTE [cold step]) does what torch.optim's wrapper around a
step does: hooks with the same arguments and in the same order, argument replacement by a pre hook, torch's error
for a bad pre hook result, the profiler label, the step body without grad, and the grad mode restored after a
step that raises. Each test runs the same scenario on torch.optim.AdamW and compares."""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import fusedopt

OPTIMIZERS = {"torch": torch.optim.AdamW, "fusedopt": fusedopt.AdamW}


def _params(generator):
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((7,), (3, 5))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    return params


def _hook_calls(make, generator):
    """What every kind of step hook sees over three steps (a regular step, then planned ones for fusedopt), with
    the step's arguments given positionally, by keyword and not at all."""
    params = _params(generator)
    optimizer = make(params, lr=1e-2)
    seen = []

    def record(kind):
        def hook(opt, args, kwargs):
            assert opt is optimizer and args[0] is optimizer
            seen.append((kind, len(args), sorted(kwargs), torch.is_grad_enabled()))

        return hook

    handles = [
        register_optimizer_step_pre_hook(record("global pre")),
        optimizer.register_step_pre_hook(record("pre")),
        optimizer.register_step_post_hook(record("post")),
        register_optimizer_step_post_hook(record("global post")),
    ]
    try:
        optimizer.step()
        optimizer.step(lambda: 1.0)
        optimizer.step(closure=lambda: 2.0)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_hooks_see_what_they_see_with_torch_optim(generator):
    calls = {name: _hook_calls(make, generator) for name, make in OPTIMIZERS.items()}
    assert calls["fusedopt"] == calls["torch"]
    assert [kind for kind, *_ in calls["torch"][:4]] == ["global pre", "pre", "post", "global post"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_pre_hook_replaces_the_arguments(name, generator):
    optimizer = OPTIMIZERS[name](_params(generator), lr=1e-2)
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: ((opt,), {"closure": lambda: 42.0}))
    assert optimizer.step() == 42.0


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_bad_pre_hook_result_raises_torchs_error_before_the_step(name, generator):
    params = _params(generator)
    before = [p.detach().clone() for p in params]
    optimizer = OPTIMIZERS[name](params, lr=1e-2)
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: 5)
    with pytest.raises(RuntimeError, match=r"must return None or a tuple of \(new_args, new_kwargs\), but got 5\."):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_profiler_sees_the_step_label(name, generator):
    optimizer = OPTIMIZERS[name](_params(generator), lr=1e-2)
    optimizer.step()  # fusedopt: the next step is a planned one
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        optimizer.step()
    labels = [event.name for event in prof.events()]
    assert labels.count("Optimizer.step#AdamW.step") == 1


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_step_body_runs_without_grad_and_the_mode_comes_back(backend, generator):
    """The step body (from its first call, the step plan's run) runs without grad and its closure with grad, as
    in torch.optim; the caller's grad mode is back after the step, also when the step raises."""
    params = _params(generator)
    optimizer = fusedopt.AdamW(params, lr=1e-2, backend=backend)
    modes = []
    run_plan = optimizer._step_plans.run

    def recording_run(*args):
        modes.append(("body", torch.is_grad_enabled()))
        return run_plan(*args)

    optimizer._step_plans.run = recording_run
    for _ in range(2):
        optimizer.step(lambda: modes.append(("closure", torch.is_grad_enabled())))
        assert torch.is_grad_enabled()
    assert modes == [("closure", True), ("body", False)] * 2
    assert all(p.is_leaf and p.grad_fn is None for p in params)
    with torch.no_grad():
        optimizer.step()
        assert not torch.is_grad_enabled()
    params[0].grad = params[0].grad.to_sparse()  # refused, as torch.optim refuses it
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()
    assert torch.is_grad_enabled()


def test_torch_optim_leaves_the_step_as_it_is():
    """torch.optim's _patch_step_function would wrap a step that is not marked hooked (hooks twice per step)."""
    step = fusedopt.AdamW.step
    fusedopt.AdamW([torch.nn.Parameter(torch.randn(3))])
    assert fusedopt.AdamW.step is step and step.hooked


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_subclass_hooks_like_torch_optim(name, generator):
    """A subclass whose step calls super().step() gets torch.optim's wrapper around its own step, as subclasses of
    torch's optimizers do: the hooks then run twice per step for both."""
    base = OPTIMIZERS[name]

    class Subclass(base):
        def step(self, closure=None):
            return super().step(closure)

    optimizer = Subclass(_params(generator), lr=1e-2)
    calls = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append(1))
    optimizer.step()
    assert len(calls) == 2


def test_without_torch_optim_internals_torch_wraps_the_step(monkeypatch, generator):
    """On a torch without a private name the wrapper reads, the step is left to torch.optim's own wrapper: hooks
    still run once per step, and the step body still runs without grad."""
    from torch.optim import optimizer as torch_optimizer

    from fusedopt._step_hooks import hooked_step

    monkeypatch.delattr(torch_optimizer, "_global_optimizer_post_hooks")
    modes = []

    class Minimal(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {})

        @hooked_step
        def step(self, closure=None):
            modes.append(torch.is_grad_enabled())

    assert not getattr(Minimal.step, "hooked", False)
    optimizer = Minimal(_params(generator))
    assert Minimal.step.hooked  # torch.optim's profile_hook_step
    calls = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append(1))
    monkeypatch.undo()  # torch's wrapper itself reads the global post hooks
    optimizer.step()
    assert calls == [1] and modes == [False]
