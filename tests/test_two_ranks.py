"""Data-parallel training on two real ranks (two processes, gloo, CPU), which a single-rank test cannot show:

- FSDP2: parameters are DTensors whose local shards differ per rank, uneven (a 5-row weight splits 3 + 2) and
  empty on one rank (a 1-row weight);
- ZeroRedundancyOptimizer over DDP: each rank's optimizer steps its own partition of the parameters.

Each scenario runs in both processes (torch.multiprocessing.spawn); an assertion in either fails the test with that
rank's traceback. Every rank sees its own data, as in data-parallel training.
"""

from __future__ import annotations

import io
import os
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import AVAILABLE_ON_CPU
from helpers import (
    FUSED_CLASSES,
    TORCH_CLASSES,
    assert_close_detailed,
    count_regular_steps,
    free_port,
    fully_shard,
)

WORLD_SIZE = 2
BACKENDS = [b for b in AVAILABLE_ON_CPU if b in ("cpu", "triton")]
# One option set per optimizer, each with weight decay on the matrices only (biases and norms in a group without).
OPTIMIZERS = {
    "AdamW": dict(lr=1e-2, weight_decay=0.1),
    "Adam": dict(lr=1e-2, amsgrad=True, weight_decay=0.05),
    "RMSprop": dict(lr=1e-3, momentum=0.9, centered=True, weight_decay=0.05),
    "Adagrad": dict(lr=1e-2, lr_decay=0.01, weight_decay=0.05),
}
MAX_NORM = 0.05  # small enough that every step clips


def _sharded_model(dtype=torch.float32):
    """Linear(16, 5) shards its rows 3 + 2, LayerNorm(5) too, Linear(5, 1) 1 + 0: rank 1 holds empty shards."""
    from torch.distributed.device_mesh import init_device_mesh

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 5), torch.nn.GELU(), torch.nn.LayerNorm(5), torch.nn.Linear(5, 1)
    ).to(dtype)  # fmt: skip
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _groups(model, weight_decay):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _make(name, model, backend=None, **extra):
    kwargs = dict(OPTIMIZERS[name])
    groups = _groups(model, kwargs.pop("weight_decay"))
    if backend is None:
        return TORCH_CLASSES[name](groups, foreach=False, **kwargs)
    return FUSED_CLASSES[name](groups, backend=backend, **kwargs, **extra)


def _backward(model, step):
    data = torch.Generator().manual_seed(100 * step + dist.get_rank())
    inputs = torch.randn(8, 16, generator=data).to(next(model.parameters()).dtype)
    model(inputs).square().mean().backward()


def _checkpoint_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}


def _save_checkpoint(model, optimizer, path: str) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save(_checkpoint_state(model, optimizer), checkpoint_id=path)


def _load_checkpoint(model, optimizer, path: str) -> None:
    """FSDP2's recipe: dcp.load fills the target's own sharded state dicts in place, which are then set."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = _checkpoint_state(model, optimizer)
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])


def _assert_models_close(model, other, what, **tolerances):
    for (name, p), q in zip(model.named_parameters(), other.parameters()):
        assert_close_detailed(p.full_tensor(), q.full_tensor(), f"rank {dist.get_rank()} {what} {name}", **tolerances)


def _clipped_steps_against_torch(backend, steps, drop_grads=lambda model, step: None) -> list:
    """Every optimizer, with max_grad_norm=, against torch.optim after torch's clip_grad_norm_ for `steps` steps
    (`drop_grads(model, step)` may set grads to None after each backward pass, on both models): the clip norm is the
    norm over all ranks' shards, and last_grad_norm is torch's total norm. Steps after the first run from the step
    plan, whose norm (a collective) every rank computes once per step. Returns each (fused optimizer, its model)."""
    runs = []
    for name in OPTIMIZERS:
        model, twin = _sharded_model(), _sharded_model()
        fused = _make(name, model, backend, max_grad_norm=MAX_NORM)
        reference = _make(name, twin)
        regular_steps = count_regular_steps(fused)
        for step in range(steps):
            for m in (model, twin):
                _backward(m, step)
                drop_grads(m, step)
            fused.step()
            norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), MAX_NORM).full_tensor()
            reference.step()
            assert float(norm) > MAX_NORM
            assert_close_detailed(fused.last_grad_norm, norm, f"{name} step {step} grad norm")
            fused.zero_grad()
            reference.zero_grad()
        assert len(regular_steps) == 1
        _assert_models_close(model, twin, name)
        runs.append((fused, model))
    return runs


# --- scenarios (run on every rank) -------------------------------------------------------------------------------
def optimizers_with_clipping(backend, directory):
    """Every optimizer with max_grad_norm= against torch.optim after torch's clip_grad_norm_, on FSDP2 shards of
    different sizes on the two ranks (_clipped_steps_against_torch)."""
    local_shapes = [tuple(p.to_local().shape) for p in _sharded_model().parameters()]
    rows = (3, 3, 3, 1) if dist.get_rank() == 0 else (2, 2, 2, 0)  # Linear, LayerNorm, Linear
    assert local_shapes == [(rows[0], 16), (rows[0],), (rows[1],), (rows[2],), (rows[3], 5), (rows[3],)]
    _clipped_steps_against_torch(backend, steps=3)


def parameters_without_a_grad_keep_the_plan(backend, directory):
    """Steps where some parameters have no grad on any rank (as after a module that did not run): the plan made at
    the first step leaves them out as torch.optim does, and max_grad_norm's norm (a collective) covers the grads
    present, as torch's clip_grad_norm_ does."""

    def drop_grads(model, step):
        if step in (1, 2):
            model[3].weight.grad = None  # rank 1's shard of it is empty
        if step == 2:
            model[0].bias.grad = None

    for fused, model in _clipped_steps_against_torch(backend, steps=4, drop_grads=drop_grads):
        assert float(fused.state[model[3].weight]["step"]) == 2.0


def grad_scaler_skips_on_every_rank(backend, directory):
    """torch.amp.GradScaler over FSDP2: an inf in one rank's shard skips the step on both ranks (fusedopt takes
    grad_scale and found_inf into its kernels), as torch.optim's step does after unscaling."""
    runs = []
    for optimizer_backend in (backend, None):
        model = _sharded_model()
        optimizer = _make("AdamW", model, optimizer_backend)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for step in range(3):
            data = torch.Generator().manual_seed(100 * step + dist.get_rank())
            scaler.scale(model(torch.randn(8, 16, generator=data)).square().mean()).backward()
            if step == 1 and dist.get_rank() == 1:
                next(model.parameters()).grad.to_local().view(-1)[0] = float("inf")
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
        runs.append((model, optimizer, scaler.get_scale()))
    (model, fused, scale), (twin, reference, torch_scale) = runs
    assert scale == torch_scale == 2.0**9  # one skipped step halved it
    assert all(float(fused.state[p]["step"]) == 2.0 for p in model.parameters())
    _assert_models_close(model, twin, "after a skipped step")


def clip_grad_norm_equals_torch(backend, directory):
    """fusedopt.clip_grad_norm_ over DTensor grads: torch's total norm (a DTensor, as torch returns) and grads."""
    import fusedopt

    model, twin = _sharded_model(), _sharded_model()
    for m in (model, twin):
        _backward(m, 0)
    norm = fusedopt.clip_grad_norm_(model.parameters(), MAX_NORM)
    expected = torch.nn.utils.clip_grad_norm_(twin.parameters(), MAX_NORM)
    assert type(norm) is type(expected)
    assert_close_detailed(norm.full_tensor(), expected.full_tensor(), "total norm")
    for p, q in zip(model.parameters(), twin.parameters()):
        assert_close_detailed(p.grad.full_tensor(), q.grad.full_tensor(), "clipped grad")


def distributed_checkpoints_interchange(backend, directory):
    """FSDP2's checkpoint recipe (torch.distributed.checkpoint save and load of the sharded state dicts of
    torch.distributed.checkpoint.state_dict) moves optimizer state both ways between fusedopt and torch.optim, and
    training continues as if uninterrupted."""
    for name in ("AdamW", "Adagrad"):
        fused_model, torch_model = _sharded_model(), _sharded_model()
        fused, reference = _make(name, fused_model, backend), _make(name, torch_model)
        regular_steps = count_regular_steps(fused)
        for step in range(3):
            for model, optimizer in ((fused_model, fused), (torch_model, reference)):
                _backward(model, step)
                optimizer.step()
                optimizer.zero_grad()
        assert len(regular_steps) == 1  # then FSDP2's DTensor params are stepped from the step plan
        del fused._plan_step
        # Swap: a torch.optim optimizer resumes fusedopt's checkpoint, and fusedopt resumes torch.optim's.
        resumed = []
        for source_model, source, target_backend in ((fused_model, fused, None), (torch_model, reference, backend)):
            checkpoint = os.path.join(directory, f"{name}-{type(source).__module__}")
            _save_checkpoint(source_model, source, checkpoint)
            model = _sharded_model()
            optimizer = _make(name, model, target_backend)
            _load_checkpoint(model, optimizer, checkpoint)
            resumed.append((model, optimizer))
        runs = [(fused_model, fused), (torch_model, reference), *resumed]
        for step in range(3, 5):
            for model, optimizer in runs:
                _backward(model, step)
                optimizer.step()
                optimizer.zero_grad()
        _assert_models_close(resumed[0][0], fused_model, f"{name} torch.optim resumed from fusedopt")
        _assert_models_close(resumed[1][0], torch_model, f"{name} fusedopt resumed from torch.optim")
        _assert_models_close(fused_model, torch_model, f"{name} fusedopt against torch.optim")


def mixed_precision_checkpoints(backend, directory):
    """bfloat16 FSDP2 params with fusedopt's mixed-precision modes: the float32 master (or its int16 remainder),
    float32 or bfloat16 state and the param groups' options go through torch.distributed.checkpoint and back
    exactly; the resumed run continues bit for bit."""
    modes = {
        "remainder": dict(master_weights="remainder"),
        "master, float32 state": dict(master_weights=True, state_dtype=torch.float32),
        "stochastic rounding, bfloat16 state": dict(stochastic_rounding=True, state_dtype=torch.bfloat16),
    }
    for mode, options in modes.items():
        model = _sharded_model(torch.bfloat16)
        optimizer = _make("AdamW", model, backend, **options)
        for step in range(2):
            _backward(model, step)
            optimizer.step()
            optimizer.zero_grad()
        checkpoint = os.path.join(directory, mode.replace(" ", "_").replace(",", ""))
        _save_checkpoint(model, optimizer, checkpoint)
        resumed_model = _sharded_model(torch.bfloat16)
        resumed = _make("AdamW", resumed_model, backend, **options)
        _load_checkpoint(resumed_model, resumed, checkpoint)
        for p, q in zip(model.parameters(), resumed_model.parameters()):
            assert optimizer.state[p].keys() == resumed.state[q].keys()
            for key, value in optimizer.state[p].items():
                loaded = resumed.state[q][key]
                assert loaded.dtype == value.dtype, f"{mode}: {key} dtype"
                local = (lambda t: t.to_local()) if key != "step" else (lambda t: t)  # noqa: E731 (gloo has no int16)
                assert torch.equal(local(loaded), local(value)), f"{mode}: {key}"
        for step in range(2, 4):
            for m, o in ((model, optimizer), (resumed_model, resumed)):
                _backward(m, step)
                o.step()
                o.zero_grad()
        for p, q in zip(model.parameters(), resumed_model.parameters()):
            assert torch.equal(p.full_tensor(), q.full_tensor()), mode


def _ddp_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 5), torch.nn.GELU(), torch.nn.LayerNorm(5), torch.nn.Linear(5, 1))
    return torch.nn.parallel.DistributedDataParallel(model)


def _zero(name, model, backend=None):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    kwargs = dict(OPTIMIZERS[name])
    groups = _groups(model, kwargs.pop("weight_decay"))
    if backend is None:
        return ZeroRedundancyOptimizer(groups, optimizer_class=TORCH_CLASSES[name], foreach=False, **kwargs)
    return ZeroRedundancyOptimizer(groups, optimizer_class=FUSED_CLASSES[name], backend=backend, **kwargs)


def zero_redundancy_optimizer(backend, directory):
    """ZeroRedundancyOptimizer with fusedopt as its optimizer_class matches it with torch.optim, for every
    optimizer; a consolidated torch.optim checkpoint loads into it (and training goes on as if uninterrupted)."""
    for name in OPTIMIZERS:
        fused_model, torch_model = _ddp_model(), _ddp_model()
        fused, reference = _zero(name, fused_model, backend), _zero(name, torch_model)
        assert len(fused.optim.param_groups[0]["params"]) < len(fused.param_groups[0]["params"])  # partitioned
        runs = [(fused_model, fused), (torch_model, reference)]
        for step in range(3):
            for model, optimizer in runs:
                _backward(model, step)
                optimizer.step()
                optimizer.zero_grad()
        reference.consolidate_state_dict(to=0)
        checkpoint = [None]
        if dist.get_rank() == 0:  # a checkpoint file's bytes, as every rank would read them
            buffer = io.BytesIO()
            torch.save(reference.state_dict(), buffer)
            checkpoint = [buffer.getvalue()]
        dist.broadcast_object_list(checkpoint, src=0)
        checkpoint = [torch.load(io.BytesIO(checkpoint[0]))]
        resumed_model = _ddp_model()
        resumed_model.load_state_dict(torch_model.state_dict())
        resumed = _zero(name, resumed_model, backend)
        resumed.load_state_dict(checkpoint[0])
        runs.append((resumed_model, resumed))
        for step in range(3, 5):
            for model, optimizer in runs:
                _backward(model, step)
                optimizer.step()
                optimizer.zero_grad()
        for (what, model), twin in zip(
            (("fusedopt", fused_model), ("fusedopt resumed from torch.optim", resumed_model)), (torch_model,) * 2
        ):
            for (param_name, p), q in zip(model.named_parameters(), twin.parameters()):
                assert_close_detailed(p, q, f"rank {dist.get_rank()} {name} {what} {param_name}")


SCENARIOS = [
    optimizers_with_clipping, parameters_without_a_grad_keep_the_plan, grad_scaler_skips_on_every_rank,
    clip_grad_norm_equals_torch,
    distributed_checkpoints_interchange, mixed_precision_checkpoints, zero_redundancy_optimizer,
]  # fmt: skip


def _worker(rank, scenario_name, backend, directory, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)  # two ranks on a two-core machine
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        globals()[scenario_name](backend, directory)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # torch 2.13 sometimes aborts at interpreter exit after DTensor collectives over gloo ("terminate called without
    # an active exception" from a static destructor, no Python frame; seen about 1 exit in 10 without fusedopt
    # imported at all). The scenario has passed on this rank by now, so leave without running destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_two_ranks(scenario, backend, tmp_path):
    """`scenario` on two ranks (a directory both share is there for checkpoints).

    A rank that dies of SIGABRT gets its scenario one more run: torch 2.13's gloo teardown aborts now and then
    (see _worker; once also "double free or corruption" from glibc, in one of about 100 runs of this file, not
    reproduced in 96 more). A failed assertion is never retried: it arrives as ProcessRaisedException."""
    for attempt in range(2):
        directory = tmp_path / f"attempt{attempt}"
        directory.mkdir()
        try:
            mp.spawn(_worker, args=(scenario.__name__, backend, str(directory), free_port()), nprocs=WORLD_SIZE)
            return
        except mp.ProcessExitedException as death:
            if attempt or death.signal_name != "SIGABRT":
                raise
            warnings.warn(f"{scenario.__name__}: a rank died of SIGABRT ({death}); running the scenario again")
