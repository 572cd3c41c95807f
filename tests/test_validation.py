"""Bad input: the same exception type and message as torch.optim, raised before anything is modified."""

from __future__ import annotations

import pytest
import torch
from helpers import FUSED_CLASSES, TORCH_CLASSES, count_regular_steps, make_params, run_steps

import fusedopt

INVALID_ARGUMENTS = [
    ("Adam", dict(lr=-1e-3)),
    ("Adam", dict(eps=-1.0)),
    ("Adam", dict(betas=(1.0, 0.999))),
    ("Adam", dict(betas=(0.9, -0.1))),
    ("Adam", dict(weight_decay=-0.1)),
    ("Adam", dict(betas=(torch.tensor([0.9, 0.9]), torch.tensor(0.99)))),  # a beta of two elements
    ("AdamW", dict(lr=-1.0)),
    ("AdamW", dict(betas=(0.9, 1.5))),
    ("AdamW", dict(weight_decay=-1e-2)),
    ("AdamW", dict(eps=-1e-8)),
    ("RMSprop", dict(lr=-1e-2)),
    ("RMSprop", dict(eps=-1.0)),
    ("RMSprop", dict(momentum=-0.5)),
    ("RMSprop", dict(weight_decay=-0.1)),
    ("RMSprop", dict(alpha=-0.99)),
    ("Adagrad", dict(lr=-1e-2)),
    ("Adagrad", dict(lr_decay=-0.1)),
    ("Adagrad", dict(weight_decay=-0.1)),
    ("Adagrad", dict(initial_accumulator_value=-1.0)),
    ("Adagrad", dict(eps=-1e-10)),
]


# Checks that torch.optim makes only after torch 2.4, the oldest torch fusedopt supports: fusedopt makes them on every
# torch, in newer torch.optim's words (torch 2.4 takes these arguments, or fails later with another error).
NEWER_TORCH_CHECKS = [
    ("Adam", dict(lr=torch.tensor([1e-3, 1e-3])), (ValueError, "Tensor lr must be 1-element")),
    ("Adam", dict(betas=(0.9, torch.tensor(0.99))), (ValueError, "betas must be either both floats or both Tensors")),
]


def _outcome(make):
    """(exception type, message), or None when `make()` raises nothing."""
    try:
        make()
    except Exception as error:
        return type(error), str(error)
    return None


def _raised(make):
    outcome = _outcome(make)
    assert outcome is not None, "nothing was raised"
    return outcome


@pytest.mark.parametrize("name,kwargs", INVALID_ARGUMENTS, ids=lambda x: str(x))
def test_constructor_errors_match_torch(name, kwargs):
    params = [torch.nn.Parameter(torch.randn(3))]
    assert _raised(lambda: FUSED_CLASSES[name](params, **kwargs)) == _raised(
        lambda: TORCH_CLASSES[name](params, **kwargs)
    )


@pytest.mark.parametrize("name,kwargs,expected", NEWER_TORCH_CHECKS, ids=lambda x: str(x))
def test_constructor_checks_of_newer_torch(name, kwargs, expected):
    params = [torch.nn.Parameter(torch.randn(3))]
    assert _raised(lambda: FUSED_CLASSES[name](params, **kwargs)) == expected
    torch_outcome = _outcome(lambda: TORCH_CLASSES[name](params, **kwargs))
    if torch_outcome is not None and torch_outcome[0] is expected[0]:  # a torch that makes the check (2.13 here)
        assert torch_outcome == expected


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad"])
def test_param_list_errors_match_torch(name):
    p = torch.nn.Parameter(torch.randn(3))
    for bad in ([], p, [p, 3.0], [{"params": [p]}, {"params": [p]}]):
        assert _raised(lambda: FUSED_CLASSES[name](bad)) == _raised(lambda: TORCH_CLASSES[name](bad))
    fused, reference = FUSED_CLASSES[name]([p]), TORCH_CLASSES[name]([p])
    assert _raised(lambda: fused.add_param_group({"params": [p]})) == _raised(
        lambda: reference.add_param_group({"params": [p]})
    )
    assert len(fused.param_groups) == 1


def test_backend_errors():
    params = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="Invalid backend: 'fast'"):
        fusedopt.AdamW(params, backend="fast")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run on cpu tensors"):
        fusedopt.AdamW(params, backend="cuda")
    assert fusedopt.AdamW(params, backend="reference").backend == "reference"


def test_unsupported_torch_switches():
    params = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="differentiable=True is not supported"):
        fusedopt.Adam(params, differentiable=True)
    with pytest.raises(ValueError, match="capturable=True is not supported"):
        fusedopt.RMSprop(params, capturable=True)
    # fused/foreach are accepted (fusedopt always fuses), and recorded in the groups like torch.optim does.
    assert fusedopt.AdamW(params, fused=True).param_groups[0]["fused"] is True
    for name in ("Adam", "AdamW", "Adagrad"):  # but not both at once, as in torch
        assert _raised(lambda: FUSED_CLASSES[name](params, fused=True, foreach=True)) == _raised(
            lambda: TORCH_CLASSES[name](params, fused=True, foreach=True)
        )


def test_failed_add_param_group_adds_nothing(generator):
    """A group whose parameters the backend cannot update is refused whole: the optimizer keeps its groups and
    steps as before."""
    params = make_params(torch.float32, generator)
    optimizer = fusedopt.AdamW(params, backend="cpu")
    on_meta = torch.nn.Parameter(torch.randn(3, device="meta"))
    with pytest.raises(RuntimeError, match="backend 'cpu' cannot run on meta tensors"):
        optimizer.add_param_group({"params": [on_meta]})
    assert len(optimizer.param_groups) == 1
    run_steps([(optimizer, params)], 1, generator)


def _snapshot(optimizer, params):
    state = {
        (i, k): v.clone() for i, p in enumerate(params) for k, v in optimizer.state[p].items() if torch.is_tensor(v)
    }
    return [p.detach().clone() for p in params], state


def _assert_unchanged(optimizer, params, snapshot):
    before_params, before_state = snapshot
    for p, q in zip(params, before_params):
        assert torch.equal(p.detach(), q)
    after_state = _snapshot(optimizer, params)[1]
    assert after_state.keys() == before_state.keys()
    for key, value in before_state.items():
        assert torch.equal(after_state[key], value), key


def _two_group_optimizer(name, generator):
    params = make_params(torch.float32, generator)
    optimizer = FUSED_CLASSES[name]([{"params": params[:4]}, {"params": params[4:], "lr": 0.003}])
    run_steps([(optimizer, params)], 2, generator)
    for p in params:
        p.grad = torch.randn_like(p)
    return optimizer, params


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad"])
def test_sparse_grad_rejected_untouched(name, generator):
    optimizer, params = _two_group_optimizer(name, generator)
    params[-2].grad = params[-2].grad.to_sparse()  # in the second group: the first must not be stepped either
    snapshot = _snapshot(optimizer, params)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()
    _assert_unchanged(optimizer, params, snapshot)


# torch.optim's words (Optimizer._cuda_graph_capture_health_check) for a step captured without capturable=True.
CAPTURE_MESSAGE = (
    r"^Attempting CUDA graph capture of step\(\) for an instance of {} but param_groups' capturable is False\."
)


@pytest.mark.parametrize("planned", [False, True], ids=["regular", "planned"])
@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad"])
def test_step_captured_into_a_cuda_graph_refused_untouched(name, planned, generator, monkeypatch):
    """A step inside CUDA graph capture raises torch.optim's error before anything runs, from a step plan too
    (NOTE [step plan]: contiguous parameters only). A CPU machine has no CUDA stream to capture: the test stands in
    a capturing one, and the optimizer's CPU backend for its CUDA one (tests/test_cuda.py captures on a GPU)."""
    params = make_params(torch.float32, generator)[: -1 if planned else None]  # the last one is transposed
    optimizer = FUSED_CLASSES[name]([{"params": params[:4]}, {"params": params[4:], "lr": 0.003}])
    run_steps([(optimizer, params)], 2, generator, skip_index=-1, noncontiguous_index=None)
    capturing = [True]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    before = params[3].detach().clone()  # seven elements (parameter 0 is empty)
    optimizer.step()  # without CUDA parameters a capturing CUDA stream is none of the optimizer's business
    assert not torch.equal(params[3].detach(), before)
    regular_steps = count_regular_steps(optimizer)
    monkeypatch.setitem(optimizer._backends, "cuda", optimizer._backends["cpu"])
    snapshot = _snapshot(optimizer, params)
    with pytest.raises(RuntimeError, match=CAPTURE_MESSAGE.format(name)):
        optimizer.step()
    _assert_unchanged(optimizer, params, snapshot)
    capturing[0] = False
    optimizer.step()
    assert not torch.equal(params[3].detach(), snapshot[0][3])
    assert len(regular_steps) == (0 if planned else 1)


def test_sparse_grad_message_matches_torch():
    p = torch.nn.Parameter(torch.randn(4))
    for name in ("Adam", "AdamW", "RMSprop"):
        p.grad = torch.randn(4).to_sparse()
        assert _raised(FUSED_CLASSES[name]([p]).step) == _raised(TORCH_CLASSES[name]([p], foreach=False).step)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad"])
def test_grad_shape_mismatch_rejected_untouched(name, generator):
    optimizer, params = _two_group_optimizer(name, generator)
    params[-1].grad.data = torch.randn(5)  # .data bypasses autograd's own shape check on assignment
    snapshot = _snapshot(optimizer, params)
    with pytest.raises(RuntimeError, match=r"grad of parameter \d+ of param group 1 has shape \(5,\)"):
        optimizer.step()
    _assert_unchanged(optimizer, params, snapshot)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad"])
def test_grad_dtype_mismatch_rejected_untouched(name, generator):
    optimizer, params = _two_group_optimizer(name, generator)
    params[-1].grad.data = params[-1].grad.data.double()
    snapshot = _snapshot(optimizer, params)
    with pytest.raises(RuntimeError, match="has dtype torch.float64 but the parameter has dtype torch.float32"):
        optimizer.step()
    _assert_unchanged(optimizer, params, snapshot)


@pytest.mark.parametrize(
    "change,which", [("resized", 0), ("resized", 1), ("resized", 3), ("float64", 0), ("float64", 3)]
)
@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad"])
def test_param_whose_memory_outgrew_its_state_rejected_untouched(name, change, which, generator):
    """`p.data = other` after the state was made (model.double(), a resize) fails the step before any of its calls
    runs: here a float32 call and a float64 call (parameter 1), and the changed parameter in either."""
    params = [torch.nn.Parameter(torch.randn(n, generator=generator, dtype=dtype)) for n, dtype in
              ((6, torch.float32), (5, torch.float64), (7, torch.float32), (9, torch.float32))]  # fmt: skip
    optimizer = FUSED_CLASSES[name]([{"params": params[:2]}, {"params": params[2:], "lr": 1e-3}])
    run_steps([(optimizer, params)], 2, generator, skip_index=-1)
    p = params[which]
    p.data = torch.cat([p.detach(), p.detach()]) if change == "resized" else p.detach().double()
    for q in params:
        q.grad = torch.randn_like(q)
    snapshot = _snapshot(optimizer, params)
    # The error of the parameter's call when it is the first (the kernel's own check), or fusedopt's check of
    # the later calls, which names the parameter.
    with pytest.raises((RuntimeError, TypeError), match=r"state.* \d+ elements|with float32 state"):
        optimizer.step()
    _assert_unchanged(optimizer, params, snapshot)


def test_integer_parameter_rejected():
    p = torch.zeros(3, dtype=torch.int32)
    optimizer = fusedopt.Adam([p])
    p.grad = torch.zeros(3, dtype=torch.int32)
    with pytest.raises(TypeError, match="parameter 0 of param group 0 is torch.int32"):
        optimizer.step()
    assert not optimizer.state[p]


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch, generator):
    """Without a buildable extension, "auto" uses the reference (one RuntimeWarning), an explicit "cpu" says
    why it cannot run, and importing fusedopt never fails."""
    from fusedopt import _extensions, backends

    broken = _extensions.ExtensionUnavailable("no C++ compiler in this test")
    monkeypatch.setattr(_extensions, "_load_cpu_extension", lambda: broken)
    monkeypatch.setattr(backends, "_warned_fallbacks", set())
    assert fusedopt.available_backends("cpu")["cpu"] == "no C++ compiler in this test"
    params = make_params(torch.float32, generator, [(5,)])
    with pytest.warns(RuntimeWarning, match="using the 'reference' backend for cpu tensors because cpu: no C"):
        optimizer = fusedopt.AdamW(params)
    assert optimizer.backend == "reference"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fusedopt.Adam(params)  # warned once per device type, not again
    with pytest.raises(RuntimeError, match="backend 'cpu' cannot run on cpu tensors: no C\\+\\+ compiler"):
        fusedopt.AdamW(params, backend="cpu")
    run_steps([(optimizer, params)], 2, generator, skip_index=-1)
