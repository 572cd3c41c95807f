"""GradScaler through the fused path (unscale on the fly, skip on inf/NaN), fused gradient clipping
(max_grad_norm=), and fusedopt.clip_grad_norm_, against torch."""

from __future__ import annotations

import pytest
import torch
from conftest import AVAILABLE_ON_CPU, CPU_BACKENDS, EMULATED_CUDA
from helpers import FUSED_CLASSES, TORCH_CLASSES, assert_close_detailed, clone_params, make_params

import fusedopt

SMALL = [(7,), (1023,), (3, 5, 7)]
# The interpreted Triton backend is included with small shapes.
BACKENDS = CPU_BACKENDS + [b for b in AVAILABLE_ON_CPU if b == "triton"] + EMULATED_CUDA
pytestmark = pytest.mark.usefixtures("cuda_on_cpu")


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def _snapshot(optimizer, model):
    state = {(id(p), k): v.clone() for p in model.parameters() for k, v in optimizer.state[p].items()}
    return [p.detach().clone() for p in model.parameters()], state


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_fused_path(backend):
    """Steps with an inf or NaN grad change nothing (params, state, step counters bit for bit); the other steps
    match torch.optim.AdamW(fused=True) under the same scaler; grads are never rewritten."""
    runs = {}
    for label, make in (
        ("fused", lambda ps: fusedopt.AdamW(ps, lr=1e-2, backend=backend)),
        ("torch", lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True)),
    ):
        model = _model()
        optimizer = make(model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
        data = torch.Generator().manual_seed(5)
        for step in range(6):
            x, y = torch.randn(8, 8, generator=data), torch.randn(8, 4, generator=data)
            scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
            if step in (2, 4):
                model[0].weight.grad[1, 1] = float("inf") if step == 2 else float("nan")
            before = _snapshot(optimizer, model)
            grads_before = [p.grad.clone() for p in model.parameters()]
            scaler.step(optimizer)
            if label == "fused":
                for g, p in zip(grads_before, model.parameters()):
                    assert torch.equal(g, p.grad) or g.isnan().any() and p.grad.isnan().any()  # not unscaled
                after = _snapshot(optimizer, model)
                unchanged = all(torch.equal(a, b) for a, b in zip(before[0], after[0])) and all(
                    torch.equal(before[1][k], after[1][k]) for k in before[1]
                )
                assert unchanged == (step in (2, 4)), f"step {step}"
            scaler.update()
            optimizer.zero_grad()
        runs[label] = [p.detach() for p in model.parameters()]
    for i, (p, q) in enumerate(zip(runs["fused"], runs["torch"])):
        assert_close_detailed(p, q, f"param {i}")


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_max_grad_norm_equals_clip_then_step(backend, name, generator):
    """max_grad_norm= gives torch's clip_grad_norm_ followed by the plain step, and leaves the grads as they were."""
    params = make_params(torch.float32, generator, SMALL)
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](params, backend=backend, max_grad_norm=0.5)
    reference = TORCH_CLASSES[name](twins, foreach=False)
    # Norms above 0.5 (clipped) and below (a coefficient of 1: the grads pass unscaled). The adaptive updates are
    # nearly blind to a constant grad scale, so the scale changes from step to step.
    for scale in (3.0, 1e-3, 3.0, 0.5):
        grads = [torch.randn(p.shape, generator=generator) * scale for p in params]
        for p, q, g in zip(params, twins, grads):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        norm = torch.nn.utils.clip_grad_norm_(twins, 0.5)
        reference.step()
        torch.testing.assert_close(fused.last_grad_norm, norm)
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_close_detailed(p, q, f"param {i}")


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_max_grad_norm_with_grad_scaler(name):
    """Scaled grads: the norm is taken of the unscaled grads, as unscale_ + clip_grad_norm_ + step would. Adam's
    coupled weight decay makes the update depend on the grads' scale (AdamW's hardly does), so a grad left scaled
    shows."""
    results = []
    for fused in (True, False):
        model = _model(3)
        options = dict(lr=1e-2, weight_decay=0.1)
        optimizer = (
            FUSED_CLASSES[name](model.parameters(), max_grad_norm=0.1, **options)
            if fused
            else TORCH_CLASSES[name](model.parameters(), foreach=False, **options)
        )
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        data = torch.Generator().manual_seed(9)
        for _ in range(4):
            x, y = torch.randn(8, 8, generator=data), torch.randn(8, 4, generator=data)
            scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
            if not fused:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
        results.append([p.detach() for p in model.parameters()])
    for i, (p, q) in enumerate(zip(*results)):
        assert_close_detailed(p, q, f"param {i}")


def test_nonfinite_norm_raises_before_anything_changes(generator):
    params = make_params(torch.float32, generator, SMALL)
    optimizer = fusedopt.AdamW(params, max_grad_norm=1.0, error_if_nonfinite=True)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    params[0].grad[0] = float("nan")
    before = [p.detach().clone() for p in params], {k: v.clone() for k, v in optimizer.state[params[1]].items()}
    with pytest.raises(RuntimeError, match="is non-finite, so it cannot be clipped"):
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before[0], params))
    assert all(torch.equal(v, optimizer.state[params[1]][k]) for k, v in before[1].items())


@pytest.mark.parametrize("value", [-1.0, 0.0])
def test_invalid_max_grad_norm(value):
    with pytest.raises(ValueError, match=f"Invalid max_grad_norm value: {value}"):
        fusedopt.Adam([torch.nn.Parameter(torch.randn(2))], max_grad_norm=value)


@pytest.mark.parametrize(
    "grad_scale,max_norm",
    [(1.0, 0.3), (1.0, 1e3), (1e-7, 1e-7)],
    ids=["clipped", "below the limit", "tiny norm (1e-6 guard)"],
)
@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_grad_norm_matches_torch(norm_type, grad_scale, max_norm, generator):
    # torch cannot take the infinity norm of an empty grad (fusedopt skips empty grads), so none is given there.
    params = make_params(torch.float32, generator, SMALL + ([(0,)] if norm_type != float("inf") else []))
    twins = clone_params(params)
    for p, q in zip(params, twins):
        p.grad = torch.randn(p.shape, generator=generator) * grad_scale
        q.grad = p.grad.clone()
    ours = fusedopt.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    theirs = torch.nn.utils.clip_grad_norm_(twins, max_norm, norm_type=norm_type)
    # Relative tolerance only: the default absolute one (1e-5) would pass any tiny grads.
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)
    for p, q in zip(params, twins):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=0)
    params[0].grad[0] = float("inf")
    with pytest.raises(RuntimeError) as ours_error:
        fusedopt.clip_grad_norm_(params, 0.3, norm_type=norm_type, error_if_nonfinite=True)
    twins[0].grad[0] = float("inf")
    with pytest.raises(RuntimeError) as torch_error:
        torch.nn.utils.clip_grad_norm_(twins, 0.3, norm_type=norm_type, error_if_nonfinite=True)
    assert str(ours_error.value) == str(torch_error.value)


@pytest.mark.parametrize("option", ["grad_scale", "max_grad_norm"])
def test_scale_and_clip_stay_on_the_device(option, monkeypatch):
    """GradScaler's 1/scale and the clip coefficient reach the kernel as a tensor (read there: no host
    synchronisation on a GPU); the host part of the factor is 1."""
    from fusedopt.backends import get_backend

    backend = get_backend("cpu")
    module, seen = backend._extension(), []

    class Spy:
        def __getattr__(self, name):
            function = getattr(module, name)

            def call(*args, **kwargs):
                if name in ("adam", "adam_planned"):
                    seen.append((kwargs["grad_factor"], kwargs["device_grad_factor"]))
                return function(*args, **kwargs)

            return call if callable(function) and name != "StepOperands" else function

    monkeypatch.setattr(backend, "_extension", lambda: Spy())
    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(2)]
    optimizer = fusedopt.AdamW(params, backend="cpu", max_grad_norm=0.5 if option == "max_grad_norm" else None)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p) * 64
        if option == "grad_scale":
            optimizer.grad_scale, optimizer.found_inf = torch.tensor(64.0), torch.tensor(0.0)
        optimizer.step()
    assert len(seen) == 3
    for host, device in seen:
        assert host == 1.0 and isinstance(device, torch.Tensor) and device.dtype == torch.float32
    expected = 1 / 64 if option == "grad_scale" else float(optimizer.last_grad_norm.reciprocal() * 0.5)
    assert float(seen[-1][1]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "backend", ["cpu", "reference"] + [b for b in AVAILABLE_ON_CPU if b == "triton"] + EMULATED_CUDA
)
def test_functional_tensor_grad_factor_equals_float(backend, generator):
    """functional.*(grad_factor=tensor) multiplies on the device exactly as the same float does on the host."""
    results = []
    for factor in (0.125, torch.tensor(0.125)):
        params = [torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in (3, 70)]
        grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) for p in params]
        sums = [torch.full_like(p, 0.1) for p in params]
        steps = [torch.tensor(0.0) for _ in params]
        fusedopt.functional.adagrad(params, grads, sums, steps, lr=0.1, lr_decay=0.0, weight_decay=0.01, eps=1e-10,
                                    maximize=True, grad_factor=factor, backend=backend)  # fmt: skip
        results.append(params + sums)
    for a, b in zip(*results):
        assert torch.equal(a, b)
