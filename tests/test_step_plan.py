"""The step plan (NOTE [step plan] in csrc/common/step_operands.h): after a regular step, later steps run from
operands kept across steps (in C++; for Triton, triton_kernels/_plan.py). Every test compares a planned optimizer
with a twin that is forced onto the regular path at every step, bit for bit, through the events that must
invalidate or bypass the plan."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref
from collections import defaultdict

import pytest
import torch
from conftest import AVAILABLE_ON_CPU, EMULATED_CUDA
from helpers import FUSED_CLASSES, SECOND_GROUP, DTensor, Shard, count_regular_steps, distribute_tensor

import fusedopt
from fusedopt import functional

SHAPES = [(7,), (33,), (5, 3), (1,), (100,), (4, 4)]
OPTIMIZERS = {
    "AdamW": dict(lr=1e-2),
    "Adam": dict(lr=1e-2, amsgrad=True, weight_decay=0.1),
    "RMSprop": dict(lr=1e-3, momentum=0.9, centered=True),
    "Adagrad": dict(lr=1e-2, lr_decay=0.01),
}


# The backends with a plan: cpu (C++), triton (triton_kernels/_plan.py; interpreted here) and cuda (C++; the host
# emulation here, NOTE [cuda host emulation]).
PLAN_BACKENDS = [b for b in ("cpu", "triton") if b in AVAILABLE_ON_CPU] + EMULATED_CUDA
pytestmark = pytest.mark.usefixtures("cuda_on_cpu")


@pytest.fixture(params=PLAN_BACKENDS)
def backend(request):
    return request.param


def _twins(name, backend, dtype=torch.float32, **kwargs):
    generator = torch.Generator().manual_seed(7)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator).to(dtype)) for s in SHAPES]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    groups = lambda ps: [{"params": ps[:3]}, {"params": ps[3:], **SECOND_GROUP[name]}]  # noqa: E731
    options = {**OPTIMIZERS[name], **kwargs}
    return (FUSED_CLASSES[name](groups(params), backend=backend, **options), params), (
        FUSED_CLASSES[name](groups(twins), backend=backend, **options),
        twins,
    )


def _step_both(planned, regular, grads):
    for (optimizer, params), force_regular in ((planned, False), (regular, True)):
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone().to(p.dtype)  # clone keeps a transposed grad's strides
        if force_regular:
            optimizer._step_plans.clear()
        optimizer.step()


def _assert_identical(planned, regular):
    (a, params), (b, twins) = planned, regular
    for i, (p, q) in enumerate(zip(params, twins)):
        assert torch.equal(p, q), f"param {i}"
        # state.get: indexing the state (a defaultdict) would add an entry for a param that never had a grad
        assert a.state.get(p, {}).keys() == b.state.get(q, {}).keys()
        for key, value in b.state.get(q, {}).items():
            assert torch.equal(a.state[p][key], value), f"state {key} of param {i}"


def _grads(generator, params):
    return [torch.randn(p.shape, generator=generator) for p in params]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_plan_matches_regular_steps_through_changes(name, backend):
    planned, regular = _twins(name, backend)
    optimizer, params = planned
    generator = torch.Generator().manual_seed(3)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 / (1 + s)) for o in (optimizer, regular[0])]
    for step in range(14):
        grads = _grads(generator, params)
        if step in (3, 4):
            grads[1] = None  # a parameter without a grad: the plan leaves it out
        if step == 6:
            for o in (optimizer, regular[0]):
                o.param_groups[1]["weight_decay"] = 0.0  # read at every step: the plan stays
            for o in (optimizer, regular[0]):
                o.load_state_dict(o.state_dict())
        if step in (10, 11):  # a transposed grad: the regular path copies it, and no plan is made from it
            grads[2] = torch.randn(3, 5, generator=generator).t()
        if step == 12:  # GradScaler's fused path: the planned step reads 1/scale on the device too
            for o in (optimizer, regular[0]):
                o.grad_scale, o.found_inf = torch.tensor(8.0), torch.tensor(0.0)
        newest = optimizer._step_plans.newest()
        _step_both(planned, regular, grads)
        if step in (10, 11):
            assert not optimizer.param_groups[0]["params"][2].grad.is_contiguous()
            assert optimizer._step_plans.newest() is newest
        for o in (optimizer, regular[0]):
            o.__dict__.pop("grad_scale", None), o.__dict__.pop("found_inf", None)
        for s in schedulers:
            s.step()
        _assert_identical(planned, regular)
    assert optimizer._step_plans


@pytest.mark.parametrize("name", ["AdamW", "Adam", "RMSprop"])
def test_plan_follows_weight_decay_modes_and_moved_params(name, backend):
    """Grads updated in place (their addresses never change, so what a backend keeps per plan, such as the CUDA
    launch tables of NOTE [planned tables], is reused): a group's weight decay going from 0 to nonzero changes how
    its tensors are updated, and a parameter given new memory (`p.data = other`) is updated there."""
    planned, regular = _twins(name, backend)
    generator = torch.Generator().manual_seed(5)
    grads = _grads(generator, planned[1])
    for optimizer, params in (planned, regular):
        optimizer.param_groups[1]["weight_decay"] = 0.0
        for p, g in zip(params, grads):
            p.grad = g.clone()
    for step in range(8):
        if step == 3:
            for optimizer, _ in (planned, regular):
                optimizer.param_groups[1]["weight_decay"] = 0.2
        if step == 5:
            for _, params in (planned, regular):
                params[4].data = params[4].data.clone()
        for optimizer, params in (planned, regular):
            for p, g in zip(params, _grads(torch.Generator().manual_seed(step), params)):
                p.grad.copy_(g)
        regular[0]._step_plans.clear()
        planned[0].step()
        regular[0].step()
        _assert_identical(planned, regular)
    assert len(planned[0]._step_plans) == 1


@pytest.mark.parametrize(
    "mode", [dict(master_weights=True), dict(master_weights="remainder"), dict(stochastic_rounding=True)]
)
def test_plan_matches_regular_steps_in_mixed_precision(mode, backend):
    planned, regular = _twins("AdamW", backend, torch.bfloat16, state_dtype=torch.float32, **mode)
    generator = torch.Generator().manual_seed(5)
    for _ in range(5):
        _step_both(planned, regular, _grads(generator, planned[1]))
        _assert_identical(planned, regular)


def test_steady_steps_skip_the_python_walk(monkeypatch, backend):
    """Once planned, a step makes no functional call: one native call per fused launch and nothing else."""
    (optimizer, params), _ = _twins("AdamW", backend)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    calls = []
    monkeypatch.setattr(functional, "adam", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(type(optimizer), "_plan_step", lambda self: pytest.fail("regular path taken"))
    for _ in range(3):
        optimizer.step()
    assert calls == []


def test_plan_is_remade_when_groups_change(backend):
    (optimizer, params), _ = _twins("Adam", backend)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    first = optimizer._step_plans.newest()
    optimizer.param_groups[1]["amsgrad"] = False  # changes what the kernel reads
    optimizer.step()
    assert len(optimizer._step_plans) == 1 and optimizer._step_plans.newest() not in (None, first)
    extra = torch.nn.Parameter(torch.randn(3))
    extra.grad = torch.randn(3)
    second = optimizer._step_plans.newest()
    optimizer.add_param_group({"params": [extra]})
    optimizer.step()
    assert len(optimizer._step_plans) == 1 and optimizer._step_plans.newest() is not second
    assert float(optimizer.state[extra]["step"]) == 1.0


# --- parameters without a grad at some steps (mixture-of-experts, task heads used in turns) ---------------------
def _count_regular_steps(optimizer, monkeypatch) -> list:
    regular_path = type(optimizer)._plan_step
    taken = []
    monkeypatch.setattr(type(optimizer), "_plan_step", lambda self: taken.append(self) or regular_path(self))
    return taken


# Which params have no grad, step after step: one, a whole group, one of each group, every one, none.
MISSING = [(), (1,), (3, 4, 5), (), (0, 5), (0, 1, 2, 3, 4, 5), (2,), (), (4,)]


def _step_through_missing_grads(planned, regular, seed):
    generator = torch.Generator().manual_seed(seed)
    for missing in MISSING:
        grads = _grads(generator, planned[1])
        _step_both(planned, regular, [None if i in missing else g for i, g in enumerate(grads)])
        _assert_identical(planned, regular)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_plan_skips_parameters_without_a_grad(name, backend, monkeypatch):
    """A plan made when every parameter had a grad takes every later step, leaving out the parameters whose grad is
    None (their values, state and step counter untouched), bit for bit as the regular path does."""
    planned, regular = _twins(name, backend)
    taken = _count_regular_steps(planned[0], monkeypatch)
    _step_through_missing_grads(planned, regular, seed=17)
    assert taken.count(planned[0]) == 1  # the first step only
    steps = [float(planned[0].state[p]["step"]) for p in planned[1]]
    assert steps == [len(MISSING) - sum(i in missing for missing in MISSING) for i in range(6)]


@pytest.mark.parametrize(
    "mode", [dict(master_weights=True), dict(master_weights="remainder"), dict(stochastic_rounding=True)]
)
def test_plan_skips_parameters_without_a_grad_in_mixed_precision(mode, backend, monkeypatch):
    """The same with bf16 params: masters stay with their params, and stochastic rounding draws each tensor's bits
    from its place in this step's call, as the regular path does."""
    planned, regular = _twins("AdamW", backend, torch.bfloat16, state_dtype=torch.float32, **mode)
    taken = _count_regular_steps(planned[0], monkeypatch)
    _step_through_missing_grads(planned, regular, seed=19)
    assert taken.count(planned[0]) == 1


def test_plan_skips_parameters_without_a_grad_with_clipping_and_scaler(backend, monkeypatch):
    """max_grad_norm= over the grads present, and GradScaler's factor and found_inf, on steps that skip."""
    planned, regular = _twins("AdamW", backend, max_grad_norm=0.5)
    optimizer = planned[0]
    taken = _count_regular_steps(optimizer, monkeypatch)
    generator = torch.Generator().manual_seed(23)
    for step, missing in enumerate(MISSING):
        for o in (optimizer, regular[0]):
            o.grad_scale, o.found_inf = torch.tensor(4.0), torch.tensor(float(step == 4))
        grads = [3 * g for g in _grads(generator, planned[1])]
        _step_both(planned, regular, [None if i in missing else g for i, g in enumerate(grads)])
        assert torch.equal(optimizer.last_grad_norm, regular[0].last_grad_norm)
        _assert_identical(planned, regular)
    assert taken.count(optimizer) == 1


def test_plans_of_parameters_used_in_turns(backend, monkeypatch):
    """Two task heads trained in turns: each turn's grads appear where the other turn's plan has none, so the
    optimizer keeps a plan per turn (the last StepPlans.LIMIT grad patterns) and the regular path runs only for
    a pattern it has not seen, or one it has forgotten."""
    planned, regular = _twins("Adam", backend)
    optimizer = planned[0]
    taken = _count_regular_steps(optimizer, monkeypatch)
    generator = torch.Generator().manual_seed(29)
    turns = [(0, 1, 2), (3, 4, 5)]  # the heads of turn A have grads where B's have none, and the other way
    for step in range(6):
        grads = _grads(generator, planned[1])
        _step_both(planned, regular, [g if i in turns[step % 2] else None for i, g in enumerate(grads)])
        _assert_identical(planned, regular)
    # A first step per turn, and turn A's once more: its plan was made before turn B's state existed.
    assert taken.count(optimizer) == 3
    # Patterns none of which lies within another (or within a turn): each needs a plan of its own. The cache
    # holds the last LIMIT of them (the two turns' plans are forgotten first).
    assert fusedopt._step_plan.StepPlans.LIMIT == 4
    pairs = [(0, 3), (1, 4), (2, 5), (0, 4), (1, 5)]
    for present, regular_step in [*((pair, True) for pair in pairs), ((1, 5), False), ((0, 3), True), ((0, 4), False)]:
        before = taken.count(optimizer)
        grads = _grads(generator, planned[1])
        _step_both(planned, regular, [g if i in present else None for i, g in enumerate(grads)])
        _assert_identical(planned, regular)
        assert taken.count(optimizer) == before + regular_step, present
    assert len(optimizer._step_plans) == 4


@pytest.mark.skipif("triton" not in PLAN_BACKENDS, reason="needs Triton (interpreted on CPU)")
@pytest.mark.parametrize("missing", [(), (3,)])
def test_triton_plan_checks_the_alignment_of_each_steps_grads(monkeypatch, missing):
    """The launch table's 16-byte promise covers the addresses it was made with; a planned step whose grad sits
    elsewhere (a contiguous view at an odd offset) launches the kernel without it (vector accesses would fault on a
    GPU), with or without parameters left out, and matches the regular path."""
    import importlib

    adam = importlib.import_module("fusedopt.triton_kernels.adam")
    launched = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(kwargs["ALIGNED"]) or self.kernel[grid](*args, **kwargs)

    monkeypatch.setattr(adam, "_adam_kernel", Recorder(adam._adam_kernel))
    planned, regular = _twins("AdamW", "triton")
    taken = _count_regular_steps(planned[0], monkeypatch)
    generator = torch.Generator().manual_seed(31)
    for step in range(3):
        grads = _grads(generator, planned[1])
        if step == 2:
            grads = [None if i in missing else g for i, g in enumerate(grads)]
            odd = torch.empty(grads[0].numel() + 1)[1:].view(grads[0].shape)  # 4 bytes past an aligned start
            grads[0] = odd.copy_(grads[0])
        for (optimizer, params), force_regular in ((planned, False), (regular, True)):
            for p, g in zip(params, grads):
                p.grad = None if g is None else g  # as they are: the odd grad keeps its address
            if force_regular:
                optimizer._step_plans.clear()
            optimizer.step()
        _assert_identical(planned, regular)
    assert taken.count(planned[0]) == 1
    assert launched[2] is True and launched[4] is False  # the planned optimizer's steps 2 and 3


# Ways to give a planned parameter new memory that the planned operands cannot take as they are.
MEMORY_CHANGES = {
    "transposed": lambda p: p.detach().t().contiguous().t(),  # same shape and values, not contiguous
    "resized": lambda p: torch.cat([p.detach().flatten(), p.detach().flatten()]),
    "float64": lambda p: p.detach().double(),
}


@pytest.mark.parametrize("change", MEMORY_CHANGES)
def test_a_param_given_unplannable_memory_takes_the_regular_path(backend, change):
    """`p.data = other` where other is not contiguous, or has another size or dtype: the planned step must do what
    a regular step does (update it, or raise the same error and change nothing), never write the planned layout."""
    planned, regular = _twins("AdamW", backend)
    generator = torch.Generator().manual_seed(11)
    for _ in range(2):
        _step_both(planned, regular, _grads(generator, planned[1]))
    memory = MEMORY_CHANGES[change](planned[1][2])
    for _, params in (planned, regular):
        params[2].data = memory.clone()  # clone keeps the strides
    assert planned[1][2].is_contiguous() == (change != "transposed")
    grads = _grads(generator, planned[1])
    before = [p.detach().clone() for p in planned[1]]
    outcomes = []
    for (optimizer, params), force_regular in ((planned, False), (regular, True)):
        for p, g in zip(params, grads):
            p.grad = g.to(p.dtype)
        if force_regular:
            optimizer._step_plans.clear()
        try:
            optimizer.step()
            outcomes.append("stepped")
        except Exception as error:  # the regular path's error, whichever it is, is the expected one
            outcomes.append(f"{type(error).__name__}: {error}")
    assert outcomes[0] == outcomes[1]
    _assert_identical(planned, regular)
    if outcomes[0] != "stepped":  # a failed step leaves every parameter as it was
        assert all(torch.equal(p, b) for p, b in zip(planned[1], before))


# Grads the planned check must refuse, and the regular path's error for each; `.grad.data =` goes around
# autograd's own checks on assignment.
BAD_GRADS = {
    "sparse": (lambda p: setattr(p, "grad", torch.randn(5, 3).to_sparse()), "does not support sparse gradients"),
    "reshaped": (lambda p: setattr(p.grad, "data", torch.randn(3, 5)), r"has shape \(3, 5\) but the parameter"),
    "float64": (lambda p: setattr(p.grad, "data", p.grad.data.double()), "has dtype torch.float64 but the param"),
}


@pytest.mark.parametrize("bad", BAD_GRADS)
def test_a_bad_grad_after_planning_raises_torchs_error_and_changes_nothing(backend, bad):
    (optimizer, params), _ = _twins("AdamW", backend)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    optimizer.step()
    before = [p.detach().clone() for p in params]
    make_bad, message = BAD_GRADS[bad]
    make_bad(params[2])  # of shape (5, 3)
    with pytest.raises(RuntimeError, match=message):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(float(optimizer.state[p]["step"]) == 2.0 for p in params)


def test_found_inf_skips_a_planned_step(backend):
    (optimizer, params), _ = _twins("AdamW", backend)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    before = [p.detach().clone() for p in params]
    optimizer.found_inf = torch.tensor(1.0)
    optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(float(optimizer.state[p]["step"]) == 1.0 for p in params)


def test_the_plan_holds_no_grads(backend):
    """zero_grad(set_to_none=True) must free the grads: the plan drops them at the end of every step."""
    (optimizer, params), _ = _twins("AdamW", backend)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    watched = weakref.ref(params[0].grad)
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    assert watched() is None


@pytest.mark.parametrize("error_if_nonfinite", [False, True])
def test_plan_with_clipping_matches_regular_steps(backend, error_if_nonfinite, monkeypatch):
    """max_grad_norm= on the plan: the norm of the planned grads, computed once per step after the checks, and
    the same steps, norms and skips as the regular path, GradScaler included."""
    planned, regular = _twins("AdamW", backend, max_grad_norm=0.5, error_if_nonfinite=error_if_nonfinite)
    optimizer = planned[0]
    regular_path = type(optimizer)._plan_step
    taken = []
    monkeypatch.setattr(type(optimizer), "_plan_step", lambda self: taken.append(self) or regular_path(self))
    norms, total_norm = [], fusedopt.clip.total_norm
    monkeypatch.setattr(fusedopt.clip, "total_norm", lambda grads, *args: norms.append(1) or total_norm(grads, *args))
    generator = torch.Generator().manual_seed(13)
    for step in range(6):
        if step in (3, 4):  # GradScaler's fused path; at step 4 it found an inf, and the step changes nothing
            for o in (optimizer, regular[0]):
                o.grad_scale, o.found_inf = torch.tensor(4.0), torch.tensor(float(step == 4))
        _step_both(planned, regular, [3 * g for g in _grads(generator, planned[1])])  # 3x: clipping bites
        for o in (optimizer, regular[0]):
            o.__dict__.pop("grad_scale", None), o.__dict__.pop("found_inf", None)
        assert torch.equal(optimizer.last_grad_norm, regular[0].last_grad_norm)
        assert float(optimizer.last_grad_norm) > 0.5
        _assert_identical(planned, regular)
    assert taken.count(optimizer) == 1  # the first step; then the plan
    skipped_norms = 2 if error_if_nonfinite else 0  # found_inf is read first and the norm is not computed
    assert len(norms) == 2 * 6 - skipped_norms  # once per step and optimizer


def test_no_plan_for_the_reference_backend_or_complex_params():
    params = [torch.nn.Parameter(torch.randn(3))]
    params[0].grad = torch.randn(3)
    reference = fusedopt.AdamW(params, backend="reference")
    reference.step()
    assert not reference._step_plans
    complex_param = [torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))]
    complex_param[0].grad = torch.randn(3, dtype=torch.complex64)
    as_real = fusedopt.AdamW(complex_param, backend="cpu")
    as_real.step()
    assert not as_real._step_plans


def test_a_planned_optimizer_deep_copies_and_pickles_without_its_plan(backend):
    (optimizer, params), _ = _twins("AdamW", backend)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    assert optimizer._step_plans
    twin = copy.deepcopy(optimizer)
    assert not twin._step_plans
    twin_params = [p for group in twin.param_groups for p in group["params"]]
    for p in twin_params:
        p.grad = torch.ones_like(p)
    twin.step()  # steps its own copies, through the regular path, then plans
    assert twin._step_plans and all(float(twin.state[p]["step"]) == 3.0 for p in twin_params)
    assert not pickle.loads(pickle.dumps(optimizer))._step_plans


def test_a_replaced_params_list_is_noticed(backend):
    """A group's params list replaced by a new list of the same length (other parameters): the plan keeps the old
    list alive, so the new one cannot reuse its id and pass for it."""
    (optimizer, params), _ = _twins("AdamW", backend)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    fresh = [torch.nn.Parameter(p.detach().clone()) for p in optimizer.param_groups[0]["params"]]
    old_values = [p.detach().clone() for p in optimizer.param_groups[0]["params"]]
    old_params = optimizer.param_groups[0]["params"]
    optimizer.param_groups[0]["params"] = fresh
    del old_params
    gc.collect()
    for p in fresh:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert all(not torch.equal(p, q) for p, q in zip(fresh, old_values))  # the new params moved
    assert all(float(optimizer.state[p]["step"]) == 1.0 for p in fresh)


# Ways to replace a parameter inside its group's list (model surgery that keeps the optimizer), in place.
PARAM_REPLACEMENTS = {
    "setitem": lambda params, new: params.__setitem__(1, new),
    "slice": lambda params, new: params.__setitem__(slice(1, 2), [new]),
    "pop_insert": lambda params, new: (params.pop(1), params.insert(1, new)),
}


@pytest.mark.parametrize("how", PARAM_REPLACEMENTS)
def test_a_param_replaced_inside_its_groups_list_is_stepped(backend, how):
    """NOTE [tracked params]: `group["params"][1] = new` keeps the list and its length; the plan must see it and
    step the new parameter (from fresh state, as torch.optim would), not the one it was made with."""
    planned, regular = _twins("AdamW", backend)
    generator = torch.Generator().manual_seed(13)
    for _ in range(2):
        _step_both(planned, regular, _grads(generator, planned[1]))
    assert planned[0]._step_plans.newest() is not None
    value = torch.randn(SHAPES[1], generator=generator)
    for optimizer, params in (planned, regular):
        new = torch.nn.Parameter(value.clone())
        PARAM_REPLACEMENTS[how](optimizer.param_groups[0]["params"], new)
        params[1] = new
    for _ in range(3):
        _step_both(planned, regular, _grads(generator, planned[1]))
        _assert_identical(planned, regular)
    assert not torch.equal(planned[1][1], value)
    assert float(planned[0].state[planned[1][1]]["step"]) == 3.0


def test_a_params_list_put_in_place_by_hand_gets_no_plan(backend):
    """A plain list assigned as a group's params cannot report a parameter replaced inside it, and wrapping it
    would cut the caller's hold on it: steps over it take the regular path, which follows it as torch.optim does."""
    planned, regular = _twins("AdamW", backend)
    generator = torch.Generator().manual_seed(17)
    for optimizer, params in (planned, regular):
        optimizer.param_groups[0]["params"] = list(optimizer.param_groups[0]["params"])
    for step in range(3):
        if step == 2:
            value = torch.randn(SHAPES[0], generator=generator)
            for optimizer, params in (planned, regular):
                params[0] = optimizer.param_groups[0]["params"][0] = torch.nn.Parameter(value.clone())
        _step_both(planned, regular, _grads(generator, planned[1]))
        assert planned[0]._step_plans.newest() is None
    _assert_identical(planned, regular)


def test_tracked_params_count_every_change():
    """NOTE [tracked params]: every list method that changes the list counts; reading does not; it pickles and
    deep-copies as a plain list."""
    from fusedopt._tracked_params import TrackedParams

    a, b, c = (torch.nn.Parameter(torch.full((1,), float(i))) for i in range(3))
    params = TrackedParams([a, b])
    changes = [
        lambda: params.__setitem__(0, c),
        lambda: params.__setitem__(slice(0, 1), [a]),
        lambda: params.__delitem__(0),
        lambda: params.__iadd__([a]),
        lambda: params.__imul__(1),
        lambda: params.append(c),
        lambda: params.extend([]),
        lambda: params.insert(0, c),
        lambda: params.pop(),
        lambda: params.remove(c),
        lambda: params.sort(key=lambda p: float(p.detach())),
        lambda: params.reverse(),
        lambda: params.clear(),
    ]
    for version, change in enumerate(changes, start=1):
        change()
        assert params.version == version
    params += [a, b]
    version = params.version
    _ = params[0], params[:1], len(params), list(params), a in params, params.index(b), params.count(a)
    assert params.version == version
    assert type(params) is TrackedParams  # `+=` keeps the list
    for twin in (copy.deepcopy(params), pickle.loads(pickle.dumps(params))):
        assert type(twin) is list and len(twin) == 2


def test_params_appended_to_a_group_in_place_are_stepped(backend):
    """`group["params"].append(p)` (the same list, one longer): torch.optim steps p from then on, so the plan must
    not pass for the shorter list it was made from, or p would neither be stepped nor counted absent."""
    planned, regular = _twins("AdamW", backend)
    generator = torch.Generator().manual_seed(13)
    for _ in range(2):
        _step_both(planned, regular, _grads(generator, planned[1]))
    extra = torch.randn(6, generator=generator)
    for optimizer, params in (planned, regular):
        params.append(torch.nn.Parameter(extra.clone()))
        optimizer.param_groups[1]["params"].append(params[-1])
    for _ in range(2):
        _step_both(planned, regular, _grads(generator, planned[1]))
    _assert_identical(planned, regular)
    assert float(planned[0].state[planned[1][-1]]["step"]) == 2.0


def test_state_entries_assigned_from_outside_are_adopted(backend):
    """NOTE [foreign state]: ZeroRedundancyOptimizer.load_state_dict assigns `state[p] = {...}` with a checkpoint's
    own tensors (here: those of a live donor optimizer, which goes on stepping) and its step counters on the CPU.
    The next step sees the plan is stale, copies the entries into the optimizer's own buffers and steps from them,
    as the regular path of a twin given copies does."""
    planned, regular = _twins("Adam", backend)
    donor, _ = _twins("Adam", backend)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        _step_both(planned, regular, _grads(generator, planned[1]))
    for _ in range(3):
        for p in donor[1]:
            p.grad = torch.randn(p.shape, generator=generator)
        donor[0].step()
    assert planned[0]._step_plans
    for p, q, d in zip(planned[1], regular[1], donor[1]):
        entry = dict(donor[0].state[d])
        planned[0].state[p] = {k: v.cpu() if v.dim() == 0 else v for k, v in entry.items()}
        regular[0].state[q] = {k: v.clone() for k, v in entry.items()}
    for _ in range(2):
        _step_both(planned, regular, _grads(generator, planned[1]))
        for p in donor[1]:
            p.grad = torch.randn(p.shape, generator=generator)
        donor[0].step()  # changes its own tensors, which the planned optimizer was given
    _assert_identical(planned, regular)
    assert all(float(planned[0].state[p]["step"]) == 5.0 for p in planned[1])


# Ways to put new tensors into a parameter's entry, value by value (NOTE [foreign state]); each is applied to both
# twins, so the regular twin steps from the values as they were given.
VALUE_CHANGES = {
    # optimizer-state offloading (verl's offload_fsdp_optimizer / load_fsdp_optimizer): every value to new memory
    "moved": lambda entry: [entry.__setitem__(k, v.clone()) for k, v in list(entry.items())],
    # a value of another dtype: adopted in the group's state dtype, as load_state_dict would
    "retyped": lambda entry: entry.__setitem__("exp_avg", entry["exp_avg"].double()),
    "updated": lambda entry: entry.update(exp_avg_sq=entry["exp_avg_sq"] * 2, step=torch.tensor(9.0)),
    "setdefault": lambda entry: (
        entry.pop("max_exp_avg_sq"),
        entry.setdefault("max_exp_avg_sq", entry["exp_avg_sq"] + 1),
    ),
}


@pytest.mark.parametrize("change", VALUE_CHANGES)
def test_state_values_assigned_from_outside_are_adopted(backend, change):
    """`state[p][name] = t`: the plan was made with the old tensors' addresses, so the next step must see that it
    is stale and adopt the new values (copy them into the optimizer's own buffers) before it runs, as it does for
    whole entries. Then it plans again from the adopted buffers."""
    planned, regular = _twins("Adam", backend)
    generator = torch.Generator().manual_seed(5)
    for _ in range(2):
        _step_both(planned, regular, _grads(generator, planned[1]))
    newest = planned[0]._step_plans.newest()
    assert newest is not None
    for optimizer, params in (planned, regular):
        for p in params[::2]:
            VALUE_CHANGES[change](optimizer.state[p])
    for _ in range(3):
        _step_both(planned, regular, _grads(generator, planned[1]))
        _assert_identical(planned, regular)
    assert planned[0]._step_plans.newest() is not newest
    assert all(planned[0].state[p]["exp_avg"].dtype == torch.float32 for p in planned[1])


@pytest.mark.parametrize("mapping", ["reset", "copied"])
def test_a_state_mapping_assigned_by_hand_is_adopted(backend, mapping):
    """`optimizer.state = defaultdict(dict)` resets an optimizer (a common idiom), and a plain mapping of entries
    may be put back the same way: the next step makes it a tracked mapping and adopts its entries."""
    planned, regular = _twins("Adam", backend)
    generator = torch.Generator().manual_seed(23)
    for _ in range(2):
        _step_both(planned, regular, _grads(generator, planned[1]))
    for optimizer, _ in (planned, regular):
        entries = {p: {k: v.clone() for k, v in e.items()} for p, e in optimizer.state.items()}
        optimizer.state = defaultdict(dict, {} if mapping == "reset" else entries)
    for _ in range(2):
        _step_both(planned, regular, _grads(generator, planned[1]))
        _assert_identical(planned, regular)
    assert all(float(planned[0].state[p]["step"]) == (2.0 if mapping == "reset" else 4.0) for p in planned[1])
    assert planned[0]._step_plans.newest() is not None


def test_adagrad_share_memory_after_planned_steps(backend):
    """Adagrad.share_memory() moves the state sums to new (shared) memory under the same tensors: the plans, which
    hold the old addresses, must go (a planned step over freed memory hung, found 2026-12-03)."""
    planned, regular = _twins("Adagrad", backend)
    generator = torch.Generator().manual_seed(29)
    for step in range(4):
        if step == 2:
            address = planned[0].state[planned[1][0]]["sum"].data_ptr()
            for optimizer, _ in (planned, regular):
                optimizer.share_memory()
            assert planned[0].state[planned[1][0]]["sum"].data_ptr() != address
        _step_both(planned, regular, _grads(generator, planned[1]))
        _assert_identical(planned, regular)
    assert planned[0].state[planned[1][0]]["sum"].is_shared()


def test_a_replaced_entrys_old_dict_no_longer_counts(backend):
    """A dict dropped from the state (its parameter given a new entry, or removed) may still be held and written
    by its caller; that must neither make the plan stale nor have its parameter adopted."""
    (optimizer, params), _ = _twins("AdamW", backend)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    old = optimizer.state[params[0]]
    optimizer.state[params[0]] = dict(old)
    del optimizer.state[params[1]]
    optimizer.step()
    dropped = optimizer.state.get(params[1])  # made anew by that step
    version = optimizer.state.version
    old["exp_avg"] = torch.zeros(1)
    assert optimizer.state.version == version and optimizer.state.take_assigned() == []
    assert dropped is not None and optimizer.state[params[1]] is dropped


# --- DTensor parameters (FSDP2): the plan gathers each step's local shards ---------------------------------------
def _dtensor_twins(backend):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1,))
    (_, params), (_, twins) = _twins("AdamW", backend)
    shard = lambda ps: [torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)])) for p in ps]  # noqa: E731
    params, twins = shard(params), shard(twins)
    groups = lambda ps: [{"params": ps[:3]}, {"params": ps[3:], **SECOND_GROUP["AdamW"]}]  # noqa: E731
    options = dict(OPTIMIZERS["AdamW"], backend=backend)
    return (fusedopt.AdamW(groups(params), **options), params), (fusedopt.AdamW(groups(twins), **options), twins)


def _dtensor_grads(generator, params):
    return [
        DTensor.from_local(torch.randn(p.to_local().shape, generator=generator), p.device_mesh, p.placements)
        for p in params
    ]


def test_bindings_refuse_tensors_that_dispatch_to_python(process_group):
    """A DTensor handed to the C++ binding itself is refused by name (it may wrap no memory of its own), never read
    through its data pointer; the optimizers hand the kernels local shards."""
    from torch.distributed.device_mesh import init_device_mesh

    from fusedopt._extensions import cpu_extension

    mesh = init_device_mesh("cpu", (1,))
    sharded = distribute_tensor(torch.randn(8), mesh, [Shard(0)])
    with pytest.raises(TypeError, match="dispatches to Python; pass its local tensor"):
        cpu_extension().stream([sharded], [sharded], [], [], [])


def test_dtensor_params_take_the_plan(process_group, backend, monkeypatch):
    """FSDP2-style DTensor params: after a regular step, steps run from the plan (no Python walk) and match a twin
    forced onto the regular path bit for bit, through a grad that vanishes and reappears and local shards that are
    replaced (FSDP2 can swap a sharded parameter's local tensor)."""
    planned, regular = _dtensor_twins(backend)
    generator = torch.Generator().manual_seed(11)
    _step_both(planned, regular, _dtensor_grads(generator, planned[1]))
    assert planned[0]._step_plans
    regular_path = type(planned[0])._plan_step
    taken = []
    monkeypatch.setattr(type(planned[0]), "_plan_step", lambda self: taken.append(self) or regular_path(self))

    def planned_steps(count):
        for _ in range(count):
            _step_both(planned, regular, _dtensor_grads(generator, planned[1]))
        return taken.count(planned[0])

    assert planned_steps(2) == 0
    grads = _dtensor_grads(generator, planned[1])
    grads[4] = None
    _step_both(planned, regular, grads)  # a vanished grad: the plan leaves its parameter out of the step
    regular_steps = taken.count(planned[0])
    assert regular_steps == 0
    assert planned_steps(2) == regular_steps  # its return: the plan made with it serves again
    for _, params in (planned, regular):
        for p in params[:2]:
            p._local_tensor = p._local_tensor.clone()  # new memory for the same values
    assert planned_steps(2) == regular_steps  # the swapped shards are stepped by the plan
    for i, (p, q) in enumerate(zip(planned[1], regular[1])):
        assert torch.equal(p.to_local(), q.to_local()), f"param {i}"
        for key, value in regular[0].state[q].items():
            value = value.to_local() if key != "step" else value
            mine = planned[0].state[p][key]
            assert torch.equal(mine.to_local() if key != "step" else mine, value), f"state {key} of param {i}"


def test_tracked_state_sees_every_way_to_replace_an_entry():
    """NOTE [foreign state]: every way to give a parameter a new entry counts and is remembered; reading does not;
    the mapping pickles and deep-copies as a defaultdict(dict) would."""
    from fusedopt._state import TrackedState

    a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    state = TrackedState()
    state[a]["step"] = torch.tensor(0.0)  # a lazily made entry
    state[b] = {"step": torch.tensor(1.0)}
    assert state.take_assigned() == [a, b] and state.take_assigned() == []
    version = state.version
    _ = state[a], state.get(c), c in state  # reads
    assert state.version == version and state.take_assigned() == []
    state.update({a: {"step": torch.tensor(2.0)}})
    state |= {b: {"step": torch.tensor(3.0)}}
    state.setdefault(c, {"step": torch.tensor(4.0)})
    assert state.take_assigned() == [a, b, c] and state.version == version + 3
    del state[a]
    state.pop(b)
    assert state.version == version + 5 and list(state) == [c]
    state.clear()
    assert state.version == version + 6 and not state
    state[a] = {"step": torch.tensor(5.0)}
    for twin in (copy.deepcopy(state), pickle.loads(pickle.dumps(state)), copy.copy(state), state.copy()):
        assert type(twin) is TrackedState and float(next(iter(twin.values()))["step"]) == 5.0
        assert twin[torch.nn.Parameter(torch.zeros(1))] == {}  # still a defaultdict(dict)


def test_tracked_state_sees_every_way_to_change_a_value():
    """NOTE [foreign state]: each entry reports values set or removed, by every dict method; reading does not."""
    from fusedopt._state import TrackedState

    a, b = (torch.nn.Parameter(torch.zeros(1)) for _ in range(2))
    state = TrackedState({a: {"step": torch.tensor(0.0)}})
    state.take_assigned()
    entry = state[a]
    changes = [
        lambda: entry.__setitem__("exp_avg", torch.zeros(1)),
        lambda: entry.update(exp_avg_sq=torch.zeros(1)),
        lambda: entry.__ior__({"exp_avg": torch.ones(1)}),
        lambda: entry.setdefault("max_exp_avg_sq", torch.zeros(1)),
        lambda: entry.pop("max_exp_avg_sq"),
        lambda: entry.__delitem__("exp_avg_sq"),
        lambda: entry.popitem(),
    ]
    for change in changes:
        version = state.version
        change()
        assert state.version == version + 1 and state.take_assigned() == [a]
    version = state.version
    _ = entry.get("step"), dict(entry), "step" in entry, entry.setdefault("step", None)  # reads
    assert state.version == version and state.take_assigned() == []
    entry.clear()
    assert state.version == version + 1 and state.take_assigned() == []  # an empty entry has nothing to adopt
    state[b]["step"] = torch.tensor(1.0)  # a lazily made entry, then a value in it
    assert state.version == version + 3 and state.take_assigned() == [b]
    given = {"step": torch.tensor(2.0)}
    state[b] = given  # stored as a tracked entry of its own: the caller's dict is not the entry
    assert state[b] == given and state[b] is not given and type(state[b]) is not dict


def _rebuilt_by_type(data):
    """A copy of `data` rebuilt the way generic collection code does it (lightning_utilities' apply_to_collection,
    with which Lightning moves optimizer state; accelerate's recursively_apply): the same type, from its items."""
    if isinstance(data, torch.Tensor):
        return data.clone()
    if isinstance(data, dict):
        items = {key: _rebuilt_by_type(value) for key, value in data.items()}
        return type(data)(data.default_factory, items) if isinstance(data, defaultdict) else type(data)(items)
    return data


def test_tracked_state_and_entries_rebuild_by_type(backend):
    """Generic code rebuilds the state, or an entry, as `type(x)(items)` (a defaultdict as `type(x)(factory,
    items)`); an entry so built belongs to no mapping until it is stored, and storing it is noticed."""
    planned, regular = _twins("AdamW", backend)
    generator = torch.Generator().manual_seed(19)
    for _ in range(2):
        _step_both(planned, regular, _grads(generator, planned[1]))
    whole = _rebuilt_by_type(planned[0].state)
    assert type(whole) is type(planned[0].state) and whole.keys() == planned[0].state.keys()
    detached = _rebuilt_by_type(planned[0].state[planned[1][0]])
    version = planned[0].state.version
    detached["exp_avg"] = detached["exp_avg"] * 2  # belongs to no mapping: nothing to notice
    assert planned[0].state.version == version
    for optimizer, params in (planned, regular):
        for p in params:  # Lightning's _optimizer_to_device, entry by entry
            optimizer.state[p] = _rebuilt_by_type(optimizer.state[p])
    for _ in range(2):
        _step_both(planned, regular, _grads(generator, planned[1]))
        _assert_identical(planned, regular)


def test_tracked_state_makes_no_reference_cycle():
    """Entries refer to their mapping weakly: a dropped optimizer's state is freed at once, without the cyclic
    garbage collector (which would otherwise keep gigabytes of device memory alive until it ran)."""
    from fusedopt._state import TrackedState

    p = torch.nn.Parameter(torch.zeros(1))
    gc.disable()
    try:
        state = TrackedState({p: {"exp_avg": torch.zeros(1)}})
        state[p]["exp_avg_sq"] = torch.zeros(1)
        alive = weakref.ref(state)
        del state
        assert alive() is None
    finally:
        gc.enable()


# --- zero_grad from the plan (NOTE [planned zero_grad] in csrc/common/step_operands.h) ----------------------------
def _spy_on_torch_zero_grad(monkeypatch) -> list:
    """A list that gets the set_to_none of every call that reaches torch.optim's own zero_grad."""
    calls = []
    torch_zero_grad = torch.optim.Optimizer.zero_grad

    def spy(self, set_to_none=True):
        calls.append(set_to_none)
        torch_zero_grad(self, set_to_none)

    monkeypatch.setattr(torch.optim.Optimizer, "zero_grad", spy)
    return calls


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_leaves_grads_as_torch_optim_does(backend, set_to_none, monkeypatch):
    """Planned steps with zero_grad between them, a parameter without a grad every other step and one that never
    has one: every grad ends as torch.optim's zero_grad leaves it, the plan is kept, and the params match a twin on
    the regular path bit for bit. set_to_none goes through the plan; zeroing in place through torch.optim."""
    planned, regular = _twins("AdamW", backend)
    (optimizer, params), (twin_optimizer, _) = planned, regular
    torch_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    torch_optimizer = torch.optim.AdamW([{"params": torch_params[:3]}, {"params": torch_params[3:]}], lr=1e-2)
    generator = torch.Generator().manual_seed(5)
    _step_both(planned, regular, [*_grads(generator, params[:5]), None])
    taken, torch_calls = count_regular_steps(optimizer), _spy_on_torch_zero_grad(monkeypatch)
    for step in range(4):
        grads = [*_grads(generator, params[:5]), None]
        if step % 2:
            grads[1] = None
        _step_both(planned, regular, grads)
        for p, g in zip(torch_params, grads):
            p.grad = None if g is None else g.clone()
        for zeroed in (optimizer, twin_optimizer, torch_optimizer):
            zeroed.zero_grad(set_to_none)
        for i, (p, q) in enumerate(zip(params, torch_params)):
            assert (p.grad is None) == (q.grad is None), f"grad {i} at step {step}"
            assert p.grad is None or torch.equal(p.grad, q.grad), f"grad {i} at step {step}"
        _assert_identical(planned, regular)
    assert not taken
    # torch.optim's zero_grad (the spy sits on the base class): with set_to_none only for torch.optim.AdamW itself
    # (the twin too makes a plan at each of its regular steps); zeroing in place, for all three.
    assert torch_calls == [set_to_none] * (1 * 4 if set_to_none else 3 * 4)


def _planned_optimizer(backend, params):
    optimizer = fusedopt.AdamW(params, lr=1e-2, backend=backend)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return optimizer


def test_zero_grad_goes_to_torch_optim_when_the_plan_cannot(backend, monkeypatch):
    """While a profiler records (its label is torch.optim's), and when the plan is not current, zero_grad is
    torch.optim's; either way every grad ends None."""
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    optimizer = _planned_optimizer(backend, params)
    assert optimizer._step_plans
    torch_calls = _spy_on_torch_zero_grad(monkeypatch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        optimizer.zero_grad()
    assert torch_calls == [True] and all(p.grad is None for p in params)
    assert [event.name for event in prof.events()].count("Optimizer.zero_grad#AdamW.zero_grad") == 1
    for p in params:
        p.grad = torch.randn(p.shape)
    optimizer.zero_grad()  # the plan is current: not torch.optim's
    assert torch_calls == [True] and all(p.grad is None for p in params)
    extra = torch.nn.Parameter(torch.randn(3))
    extra.grad = torch.randn(3)
    optimizer.add_param_group({"params": [extra]})  # drops the plan
    for p in params:
        p.grad = torch.randn(p.shape)
    optimizer.zero_grad()
    assert torch_calls == [True, True] and all(p.grad is None for p in [*params, extra])


def test_zero_grad_of_parameter_subclasses_goes_to_torch_optim(backend, monkeypatch):
    """A parameter of a tensor subclass may have a grad setter of its own: the plan leaves zero_grad to torch."""

    class TaggedParameter(torch.nn.Parameter):
        pass

    params = [TaggedParameter(torch.randn(s)) for s in SHAPES]
    optimizer = _planned_optimizer(backend, params)
    assert optimizer._step_plans or backend == "triton"  # the Triton plan itself takes plain tensors only
    torch_calls = _spy_on_torch_zero_grad(monkeypatch)
    optimizer.zero_grad()
    assert torch_calls == [True] and all(p.grad is None for p in params)


def test_zero_grad_of_dtensor_params_goes_to_torch_optim(process_group, backend, monkeypatch):
    """A plan over DTensor params holds their local shards, whose grads are not the params' grads."""
    planned, regular = _dtensor_twins(backend)
    generator = torch.Generator().manual_seed(13)
    for _ in range(2):
        _step_both(planned, regular, _dtensor_grads(generator, planned[1]))
    optimizer, params = planned
    torch_calls = _spy_on_torch_zero_grad(monkeypatch)
    optimizer.zero_grad()
    assert torch_calls == [True] and all(p.grad is None for p in params)


def test_zero_grad_goes_to_torch_optim_on_a_torch_that_cannot_tell_profiling(backend, monkeypatch):
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    optimizer = _planned_optimizer(backend, params)
    assert optimizer._step_plans
    torch_calls = _spy_on_torch_zero_grad(monkeypatch)
    monkeypatch.delattr(torch.autograd, "_profiler_enabled")
    optimizer.zero_grad()
    assert torch_calls == [True] and all(p.grad is None for p in params)
