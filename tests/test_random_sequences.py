"""Random sequences of what training code does between steps, run through three optimizers at once:

- "planned": a fusedopt optimizer on a backend that plans its steps (NOTE [step plan] in fusedopt/_step_plan.py),
- "regular": its twin, forced onto the regular path at every step (its plans dropped before each),
- "third": torch.optim (foreach=False) for float32 parameters, or, for the mixed-precision modes torch.optim does
  not have, fusedopt's reference backend.

The events (lr, weight decay, betas, eps and maximize changes; checkpoint round trips; parameters given new memory;
state entries dropped, replaced value by value or changed in place, the state mapping reset; parameters added in
a new group (sometimes of a second dtype) or replaced inside their group's list; requires_grad toggles;
parameters without grads, accumulated grads, zero_grad both ways; GradScaler's fused path with and without inf;
clipping) are drawn from a seeded generator, so a failure names the seed and the last
events before it. The planned optimizer must equal its twin bit for bit after every step, and the third within
tolerance; the targeted tests of each event live in tests/test_step_plan.py and tests/test_state_dict.py. The
sequences run on plain and on DTensor parameters (FSDP2's, on a one-rank mesh), and on a GPU on CUDA tensors.
"""

from __future__ import annotations

import copy
import random
from collections import defaultdict

import pytest
import torch
from conftest import AVAILABLE_ON_CPU, EMULATED_CUDA
from helpers import FUSED_CLASSES, TORCH_CLASSES, DTensor, Shard

pytestmark = pytest.mark.usefixtures("cuda_on_cpu")

SHAPES = [(0,), (1,), (7,), (33,), (5, 3), (4, 4), (1025,), (3, 1, 5)]
STEPS = 30
STATE_NAMES = ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "momentum_buffer", "grad_avg", "sum"]
# Seeds per backend: the interpreted Triton backend costs about ten times as much per step.
SEEDS = {"cpu": range(64), "cuda": range(64), "triton": range(8)}
PLAN_BACKENDS = [b for b in ("cpu", "triton") if b in AVAILABLE_ON_CPU] + EMULATED_CUDA
# On a GPU (bench/gpu_check.sh, marker `gpu`): the compiled CUDA and Triton backends on CUDA tensors, fewer seeds (each
# Triton kernel variant compiles once, and the device check has minutes).
ON_GPU = torch.cuda.is_available()
GPU_SEEDS = {"cuda": range(16), "triton": range(4)}


def _torch_adagrad_makes_missing_state() -> bool:
    """Whether torch.optim.Adagrad steps a parameter it has no state for. torch 2.4's made its state in __init__
    only: a parameter added later, or whose state was dropped, raised KeyError('sum'); torch 2.13's makes it, as
    fusedopt does."""
    p, q = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.Adagrad([p])
    optimizer.add_param_group({"params": [q]})
    p.grad, q.grad = torch.ones(1), torch.ones(1)
    try:
        optimizer.step()
    except KeyError:
        return False
    return True


TORCH_ADAGRAD_MAKES_MISSING_STATE = _torch_adagrad_makes_missing_state()


def _draw_options(rng: random.Random) -> tuple[str, dict, dict, torch.dtype]:
    """(optimizer name, torch.optim's options, fusedopt's own options, parameter dtype)."""
    name = rng.choice(["Adam", "AdamW", "RMSprop", "Adagrad"])
    options = {"lr": rng.choice([1e-3, 1e-2]), "weight_decay": rng.choice([0.0, 0.05]), "maximize": rng.random() < 0.3}
    if name in ("Adam", "AdamW"):
        options["amsgrad"] = rng.random() < 0.5
    elif name == "RMSprop":
        options.update(centered=rng.random() < 0.5, momentum=rng.choice([0.0, 0.9]))
    else:
        options.update(lr_decay=rng.choice([0.0, 0.01]), initial_accumulator_value=rng.choice([0.0, 0.1]))
    own = {"max_grad_norm": rng.choice([None, None, None, 1.0])}
    dtype = torch.float32
    if rng.random() < 0.5:  # a mixed-precision mode: the third optimizer is fusedopt's reference backend
        dtype = rng.choice([torch.bfloat16, torch.float16])
        own["master_weights"] = rng.choice([False, True] + (["remainder"] if dtype == torch.bfloat16 else []))
        own["state_dtype"] = rng.choice([None, torch.float32, torch.bfloat16])
        if dtype == torch.bfloat16 and not own["master_weights"]:
            own.update(stochastic_rounding=rng.random() < 0.5, rounding_seed=rng.randrange(100))
    return name, options, own, dtype


class Worlds:
    """The three optimizers and their parameters, kept in step with each other."""

    def __init__(self, seed: int, backend: str, sharded: bool = False, device: str = "cpu") -> None:
        self.device = torch.device(device)
        # FSDP2's parameters: DTensors sharded on a one-rank mesh (the plan gathers their local shards in Python).
        self.mesh = None
        if sharded:
            from torch.distributed.device_mesh import init_device_mesh

            self.mesh = init_device_mesh("cpu", (1,))
        self.rng = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.name, options, own, self.dtype = _draw_options(self.rng)
        self.uses_torch = self.dtype == torch.float32
        self.clip = own["max_grad_norm"]
        self.description = f"seed {seed}{' sharded' if sharded else ''}: {self.name} {options} {own}"
        values = [self.new_value() for _ in range(self.rng.randint(1, 8))]
        split = self.rng.randint(0, len(values))
        self.worlds = []
        for kind in ("planned", "regular", "third"):
            params = [self.new_param(v) for v in values]
            groups = [{"params": params[:split]}, {"params": params[split:], "lr": 3e-3}]
            groups = [g for g in groups if g["params"]]
            if kind == "third" and self.uses_torch:
                optimizer = TORCH_CLASSES[self.name](groups, foreach=False, **options)
            else:
                chosen = "reference" if kind == "third" else backend
                optimizer = FUSED_CLASSES[self.name](groups, backend=chosen, **options, **own)
            self.worlds.append((kind, optimizer, params))
        self.events: list[str] = []
        self.scaled_last_step = False
        # The events that leave torch.optim.Adagrad a parameter without state, where it cannot step it.
        self.skipped_events = set()
        if self.uses_torch and self.name == "Adagrad" and not TORCH_ADAGRAD_MAKES_MISSING_STATE:
            self.skipped_events = {"add_param_group", "drop_state", "reset_state", "replace_param_in_its_group"}

    def new_value(self) -> torch.Tensor:
        return torch.randn(self.rng.choice(SHAPES), generator=self.generator).to(self.device, self.dtype)

    def as_sharded(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` as a DTensor on the mesh when the parameters are sharded (the whole of it is the one rank's
        shard), else as it is."""
        return tensor if self.mesh is None else DTensor.from_local(tensor, self.mesh, [Shard(0)], run_check=False)

    def new_param(self, value: torch.Tensor) -> torch.nn.Parameter:
        return torch.nn.Parameter(self.as_sharded(value.clone()))

    def each(self, change) -> None:
        for _, optimizer, params in self.worlds:
            change(optimizer, params)

    def pick_group(self) -> int:
        return self.rng.randrange(len(self.worlds[0][1].param_groups))

    def pick_param(self) -> int:
        return self.rng.randrange(len(self.worlds[0][2]))


# --- events between steps: each draws what it does, says it, and applies it to all three optimizers --------------
def set_hyperparameter(w: Worlds) -> None:
    group = w.pick_group()
    choices = {"lr": [1e-3, 5e-3, 2e-2], "weight_decay": [0.0, 0.02, 0.1], "eps": [1e-8, 1e-6, 1e-3]}
    if w.name in ("Adam", "AdamW"):
        choices["betas"] = [(0.9, 0.999), (0.8, 0.95)]
    key = w.rng.choice(sorted(choices))
    value = w.rng.choice(choices[key])
    if key == "lr" and w.rng.random() < 0.3:
        value = torch.tensor(value)  # torch.optim takes a tensor lr too (foreach=False, or fused)
    w.events.append(f"group {group} {key}={value}")
    w.each(lambda o, _: o.param_groups[group].__setitem__(key, value))


def flip_maximize(w: Worlds) -> None:
    group = w.pick_group()
    value = not w.worlds[0][1].param_groups[group]["maximize"]
    w.events.append(f"group {group} maximize={value}")
    w.each(lambda o, _: o.param_groups[group].__setitem__("maximize", value))


def checkpoint_round_trip(w: Worlds) -> None:
    w.events.append("load_state_dict(deepcopy(state_dict()))")
    w.each(lambda o, _: o.load_state_dict(copy.deepcopy(o.state_dict())))


def give_new_memory(w: Worlds) -> None:
    i = w.pick_param()
    w.events.append(f"p{i}.data = clone")
    w.each(lambda _, params: setattr(params[i], "data", params[i].data.clone()))


def drop_state(w: Worlds) -> None:
    i = w.pick_param()
    w.events.append(f"del state[p{i}]")
    w.each(lambda o, params: o.state.pop(params[i], None))


def _act_on_a_state_value(w: Worlds, what: str, act) -> None:
    """`act(entry, name)` on one state value of one parameter, where the parameter has it."""
    i, name = w.pick_param(), w.rng.choice(STATE_NAMES)
    w.events.append(f"state[p{i}][{name}]{what}")

    def apply(o, params):
        entry = o.state.get(params[i])
        if entry and name in entry:
            act(entry, name)

    w.each(apply)


def reset_state(w: Worlds) -> None:
    w.events.append("state = defaultdict(dict)")
    w.each(lambda o, _: setattr(o, "state", defaultdict(dict)))


def replace_state_value(w: Worlds) -> None:
    _act_on_a_state_value(w, " = clone", lambda entry, name: entry.__setitem__(name, entry[name].clone()))


def change_state_in_place(w: Worlds) -> None:
    _act_on_a_state_value(w, ".mul_(0.5)", lambda entry, name: entry[name].mul_(0.5))


def add_param_group(w: Worlds) -> None:
    value = w.new_value()
    if w.rng.random() < 0.3:  # another dtype: a second fused call per step
        value = value.to(torch.float64 if w.uses_torch else torch.float32)
    w.events.append(f"add_param_group {tuple(value.shape)} {value.dtype}")

    def add(o, params):
        params.append(w.new_param(value))
        o.add_param_group({"params": [params[-1]], "lr": 4e-3})

    w.each(add)


def replace_param_in_its_group(w: Worlds) -> None:
    group = w.pick_group()
    index = w.rng.randrange(len(w.worlds[0][1].param_groups[group]["params"]))
    value = w.new_value()
    w.events.append(f"group {group} params[{index}] = new {tuple(value.shape)}")

    def replace(o, params):
        old = o.param_groups[group]["params"][index]
        new = w.new_param(value)
        o.param_groups[group]["params"][index] = new
        params[next(i for i, p in enumerate(params) if p is old)] = new
        o.state.pop(old, None)  # else state_dict() fails on it (KeyError), torch.optim's as well

    w.each(replace)


def toggle_requires_grad(w: Worlds) -> None:
    i = w.pick_param()
    value = not w.worlds[0][2][i].requires_grad
    w.events.append(f"p{i}.requires_grad_({value})")
    w.each(lambda _, params: params[i].requires_grad_(value))


EVENTS = [
    (0.25, set_hyperparameter),
    (0.06, flip_maximize),
    (0.08, checkpoint_round_trip),
    (0.08, give_new_memory),
    (0.05, drop_state),
    (0.02, reset_state),
    (0.08, replace_state_value),
    (0.08, change_state_in_place),
    (0.05, add_param_group),
    (0.05, replace_param_in_its_group),
    (0.04, toggle_requires_grad),
]


def give_grads(w: Worlds) -> bool:
    """This step's grads (some None, some transposed, some accumulated into the last ones), and GradScaler's scale
    and found_inf for the fused optimizers, which unscale in the kernels; torch.optim gets the unscaled grads and,
    where found_inf is set, no step. Returns whether found_inf is set."""
    scale, found_inf = None, False
    if w.rng.random() < 0.15:
        scale, found_inf = w.rng.choice([1024.0, 0.25]), w.rng.random() < 0.25
    # Accumulating into grads that were scaled for the fused optimizers only would compare different sums.
    accumulate = scale is None and not w.scaled_last_step and w.rng.random() < 0.2
    w.scaled_last_step = scale is not None
    grads = []
    for p in w.worlds[0][2]:
        grad = None
        if p.requires_grad and w.rng.random() >= 0.15:
            grad = torch.randn(p.shape, generator=w.generator, dtype=torch.float64).to(w.device)
            if grad.dim() == 2 and w.rng.random() < 0.1:
                grad = grad.t().contiguous().t()
        grads.append(grad)
    w.events.append(("accumulate" if accumulate else "assign") + (f", scale {scale} inf {found_inf}" if scale else ""))
    for kind, optimizer, params in w.worlds:
        unscaled = kind == "third" and w.uses_torch
        for p, grad in zip(params, grads):
            if grad is None:
                if not accumulate:
                    p.grad = None
                continue
            grad = w.as_sharded((grad if scale is None or unscaled else grad * scale).to(p.dtype))
            if accumulate and p.grad is not None:
                p.grad.add_(grad)
            else:
                p.grad = grad.clone()  # clone keeps a transposed grad's strides
        if scale is not None and not unscaled:
            on_device = dict(device=w.device)
            optimizer.grad_scale = torch.tensor(scale, **on_device)
            optimizer.found_inf = torch.tensor(float(found_inf), **on_device)
    return found_inf


def step_all(w: Worlds, found_inf: bool) -> list[str]:
    outcomes = []
    for kind, optimizer, params in w.worlds:
        try:
            if kind == "regular":
                optimizer._step_plans.clear()
            if kind == "third" and w.uses_torch:
                if found_inf:
                    outcomes.append("stepped")  # GradScaler skips a torch.optim step with an inf grad
                    continue
                with_grad = [p for p in params if p.grad is not None]
                kept = [p.grad.clone() for p in with_grad]
                if w.clip:  # torch's clip_grad_norm_ rewrites the grads; fusedopt folds it into the step
                    torch.nn.utils.clip_grad_norm_(with_grad, w.clip)
                optimizer.step()
                for p, grad in zip(with_grad, kept):
                    p.grad.copy_(grad)
            else:
                optimizer.step()
            outcomes.append("stepped")
        except Exception as error:  # every optimizer must raise the same error, or none
            outcomes.append(f"{type(error).__name__}: {error}")
        optimizer.__dict__.pop("grad_scale", None), optimizer.__dict__.pop("found_inf", None)
    return outcomes


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaNs included (torch.equal calls a NaN unequal to itself; centered RMSprop on float16 state
    takes the square root of a variance that rounding made negative, as torch.optim does)."""
    as_integers = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    a, b = _local(a), _local(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.view(as_integers[a.element_size()]), b.view(as_integers[b.element_size()]))


def check_all(w: Worlds) -> None:
    (_, planned, params), (_, regular, twins), (_, third, others) = w.worlds
    tolerance = 1e-4 if w.uses_torch else 2e-2
    for i, (p, twin, other) in enumerate(zip(params, twins, others)):
        assert _same_bits(p.detach(), twin.detach()), f"p{i}: planned and regular differ"
        close = dict(rtol=tolerance, atol=tolerance, equal_nan=True)
        torch.testing.assert_close(_local(p).float(), _local(other).float(), **close, msg=f"p{i}: third")
        mine, theirs = planned.state.get(p, {}), third.state.get(other, {})
        assert mine.keys() == regular.state.get(twin, {}).keys(), f"p{i}: state keys"
        if not theirs and mine.get("step") is not None and float(mine["step"]) == 0:
            continue  # made by a step GradScaler skipped: torch.optim's fused kernels make it too, its loop none
        assert set(mine) >= set(theirs), f"p{i}: state keys {set(mine)} {set(theirs)}"
        for name, value in mine.items():
            assert _same_bits(value, regular.state[twin][name]), f"p{i}: state {name}, planned and regular"
            if name in theirs and name != "master_remainder":  # the low bits of a float32 master differ by ulps
                mine_, theirs_ = _local(value).float(), _local(theirs[name]).float()
                torch.testing.assert_close(mine_, theirs_, **close, msg=f"p{i}: {name}, third")


def _run(w: Worlds) -> None:
    for step in range(STEPS):
        for probability, event in EVENTS:
            if w.rng.random() < probability and event.__name__ not in w.skipped_events:
                event(w)
        outcomes = step_all(w, give_grads(w))
        context = f"{w.description}, step {step}, last events {w.events[-6:]}"
        assert len(set(outcomes)) == 1, f"{context}: {outcomes}"
        if w.rng.random() < 0.3:
            set_to_none = w.rng.random() < 0.5
            w.events.append(f"zero_grad(set_to_none={set_to_none})")
            w.each(lambda o, _: o.zero_grad(set_to_none=set_to_none))
        try:
            check_all(w)
        except AssertionError as error:
            raise AssertionError(f"{context}: {error}") from None


@pytest.mark.parametrize("backend, seed", [(backend, seed) for backend in PLAN_BACKENDS for seed in SEEDS[backend]])
def test_random_sequences(backend, seed):
    _run(Worlds(seed, backend))


if ON_GPU:  # collected on a GPU only, as tests/test_cuda.py is (conftest.py), rather than reported as skips

    @pytest.mark.gpu
    @pytest.mark.parametrize("backend, seed", [(b, seed) for b in GPU_SEEDS for seed in GPU_SEEDS[b]])
    def test_random_sequences_on_the_gpu(backend, seed):
        _run(Worlds(seed, backend, device="cuda"))


# DTensor operations cost about ten times as much host time as plain ones.
SHARDED_SEEDS = {"cpu": range(8), "cuda": range(8), "triton": range(2)}


@pytest.mark.parametrize(
    "backend, seed", [(backend, seed) for backend in PLAN_BACKENDS for seed in SHARDED_SEEDS[backend]]
)
def test_random_sequences_of_sharded_params(backend, seed, process_group):
    _run(Worlds(seed, backend, sharded=True))
