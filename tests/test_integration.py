"""fusedopt inside the machinery of real training: GradScaler, DDP, ZeroRedundancyOptimizer, FSDP2 DTensors,
complex parameters, and the functional API on views of larger buffers."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import CPU_TENSOR_BACKENDS
from helpers import (
    DTensor,
    Shard,
    assert_close_detailed,
    clone_params,
    count_regular_steps,
    distribute_tensor,
    make_params,
    run_steps,
)

import fusedopt
from fusedopt import functional

pytestmark = pytest.mark.usefixtures("cuda_on_cpu")


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))


@pytest.mark.parametrize("backend", CPU_TENSOR_BACKENDS)
def test_grad_scaler_with_injected_inf(backend):
    """GradScaler unscales, skips the step whose grads hold an inf, and lowers its scale, as with torch.optim."""
    results = []
    for make in (lambda ps: fusedopt.AdamW(ps, lr=1e-2, backend=backend), lambda ps: torch.optim.AdamW(ps, lr=1e-2)):
        model = _model()
        optimizer = make(model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        data = torch.Generator().manual_seed(1)
        scales = []
        for step in range(6):
            x, y = torch.randn(8, 16, generator=data), torch.randn(8, 4, generator=data)
            loss = torch.nn.functional.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            if step == 3:
                model[0].weight.grad[0, 0] = float("inf")
            before = [p.detach().clone() for p in model.parameters()]
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            skipped = all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
            assert skipped == (step == 3)
            scales.append(scaler.get_scale())
        results.append(([p.detach() for p in model.parameters()], scales))
    (fused_params, fused_scales), (torch_params, torch_scales) = results
    assert fused_scales == torch_scales
    for i, (p, q) in enumerate(zip(fused_params, torch_params)):
        assert_close_detailed(p, q, f"param {i}")


@pytest.mark.parametrize("backend", CPU_TENSOR_BACKENDS)
def test_complex_parameters_match_torch(backend, generator):
    for name, fused_cls, torch_cls in (
        ("AdamW", fusedopt.AdamW, torch.optim.AdamW),
        ("RMSprop", fusedopt.RMSprop, torch.optim.RMSprop),
        ("Adagrad", fusedopt.Adagrad, torch.optim.Adagrad),
    ):
        params = [torch.nn.Parameter(torch.randn(5, 3, dtype=torch.complex64, generator=generator))]
        twins = clone_params(params)
        fused = fused_cls(params, weight_decay=0.1, backend=backend)
        reference = torch_cls(twins, weight_decay=0.1, foreach=False)
        run_steps([(fused, params), (reference, twins)], 5, generator, skip_index=-1)
        assert_close_detailed(params[0], twins[0], name)
        assert fused.state[params[0]]["step"].dtype == reference.state[twins[0]]["step"].dtype


@pytest.mark.parametrize("backend", CPU_TENSOR_BACKENDS)
def test_functional_on_views_writes_nothing_outside(backend, generator):
    """Params and state as views into larger poisoned buffers, at odd offsets: the update matches the reference
    and not one element outside the views changes (no out-of-bounds writes)."""
    sizes = [1, 7, 1023, 40_000]
    guard = 37  # odd, so views start unaligned
    buffers = {
        name: torch.full((sum(sizes) + guard * (len(sizes) + 1),), float("nan")) for name in ("p", "g", "m", "v")
    }
    views = {name: [] for name in buffers}
    offset = guard
    for n in sizes:
        for name, buffer in buffers.items():
            view = buffer[offset : offset + n]
            view.copy_(
                torch.randn(n, generator=generator).abs() if name == "v" else torch.randn(n, generator=generator)
            )
            views[name].append(view)
        offset += n + guard
    expected = {name: [v.clone() for v in vs] for name, vs in views.items()}
    kwargs = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.1, eps=1e-8, amsgrad=False, maximize=False)
    steps, expected_steps = [torch.tensor(3.0) for _ in sizes], [torch.tensor(3.0) for _ in sizes]
    functional.adam(
        views["p"], views["g"], views["m"], views["v"], [], steps, decoupled=True, backend=backend, **kwargs
    )
    functional.adam(
        expected["p"],
        expected["g"],
        expected["m"],
        expected["v"],
        [],
        expected_steps,
        decoupled=True,
        backend="reference",
        **kwargs,
    )
    for name in ("p", "m", "v"):
        for i, (actual, want) in enumerate(zip(views[name], expected[name])):
            assert_close_detailed(actual, want, f"{name}[{i}]")
        outside = torch.ones_like(buffers[name], dtype=torch.bool)
        offset = guard
        for n in sizes:
            outside[offset : offset + n] = False
            offset += n + guard
        assert buffers[name][outside].isnan().all(), f"{name}: an element outside the views was written"
    assert [float(s) for s in steps] == [4.0] * len(sizes)


def test_functional_empty_lists():
    for backend in CPU_TENSOR_BACKENDS:
        functional.adagrad(
            [], [], [], [], lr=0.1, lr_decay=0, weight_decay=0, eps=1e-10, maximize=False, backend=backend
        )


# --- distributed: one gloo process (conftest's process_group); tests/test_two_ranks.py runs two -----------------
@pytest.mark.parametrize("bucket_view", [False, True], ids=["grads", "grads-as-bucket-views"])
def test_ddp_wrapped_model(process_group, bucket_view):
    """DDP, also with gradient_as_bucket_view=True (grads are views into DDP's flat buckets, kept across steps,
    and zero_grad zeroes them in place): after the first step the step plan steps them."""
    fused_model, torch_model = _model(), _model()
    ddp = lambda model: torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=bucket_view)  # noqa: E731
    ddp_fused, ddp_torch = ddp(fused_model), ddp(torch_model)
    fused = fusedopt.AdamW(ddp_fused.parameters(), lr=1e-2)
    reference = torch.optim.AdamW(ddp_torch.parameters(), lr=1e-2, foreach=False)
    data = torch.Generator().manual_seed(2)
    regular_steps = count_regular_steps(fused)
    for _ in range(5):
        x, y = torch.randn(8, 16, generator=data), torch.randn(8, 4, generator=data)
        for model, optimizer in ((ddp_fused, fused), (ddp_torch, reference)):
            optimizer.zero_grad(set_to_none=not bucket_view)
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    assert len(regular_steps) == 1
    for p, q in zip(fused_model.parameters(), torch_model.parameters()):
        assert_close_detailed(p, q, "ddp param")


def test_zero_redundancy_optimizer(process_group):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    fused_model, torch_model = _model(), _model()
    fused = ZeroRedundancyOptimizer(fused_model.parameters(), optimizer_class=fusedopt.AdamW, lr=1e-2)
    reference = ZeroRedundancyOptimizer(torch_model.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-2)
    data = torch.Generator().manual_seed(3)
    for _ in range(5):
        x, y = torch.randn(8, 16, generator=data), torch.randn(8, 4, generator=data)
        for model, optimizer in ((fused_model, fused), (torch_model, reference)):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    for p, q in zip(fused_model.parameters(), torch_model.parameters()):
        assert_close_detailed(p, q, "zero param")
    fused.consolidate_state_dict(to=0)
    assert fused.state_dict()["state"].keys() == {i for i, _ in enumerate(fused_model.parameters())}


def test_dtensor_parameters(process_group, generator):
    """FSDP2 hands optimizers DTensor parameters; fusedopt updates the local shards and keeps DTensor state."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1,))
    plain = make_params(torch.float32, generator, shapes=[(6, 4), (10,)])[:2]
    sharded = [torch.nn.Parameter(distribute_tensor(p.detach().clone(), mesh, [Shard(0)])) for p in plain]
    twins = [torch.nn.Parameter(distribute_tensor(p.detach().clone(), mesh, [Shard(0)])) for p in plain]
    fused = fusedopt.AdamW(sharded, lr=1e-2)
    reference = torch.optim.AdamW(twins, lr=1e-2, foreach=False)
    for _ in range(4):
        for p, q in zip(sharded, twins):
            g = torch.randn(p.shape, generator=generator)
            p.grad = distribute_tensor(g, mesh, [Shard(0)])
            q.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
        fused.step()
        reference.step()
    for p, q in zip(sharded, twins):
        assert isinstance(p, DTensor)
        assert_close_detailed(p.full_tensor(), q.full_tensor(), "dtensor param")
        assert isinstance(fused.state[p]["exp_avg"], DTensor)
        assert fused.state[p]["exp_avg"].placements == p.placements
        assert_close_detailed(fused.state[p]["exp_avg"].full_tensor(), reference.state[q]["exp_avg"].full_tensor(), "m")


def test_dtensor_state_saves_and_deep_copies(process_group, generator):
    """NOTE [dtensor state offsets]: the state of every DTensor parameter, not only a bucket's first, survives
    torch.save and copy.deepcopy (per-rank checkpoints of FSDP2 models), and loads back as it was."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1,))
    plain = make_params(torch.float32, generator, shapes=[(6, 4), (10,), (3, 5)])[:3]
    shard = lambda ps: [torch.nn.Parameter(distribute_tensor(p.detach().clone(), mesh, [Shard(0)])) for p in ps]  # noqa: E731
    params, twins = shard(plain), shard(plain)
    optimizer = fusedopt.AdamW(params, lr=1e-2)
    for p in params:
        p.grad = distribute_tensor(torch.randn(p.shape, generator=generator), mesh, [Shard(0)])
    optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    for copied in (torch.load(buffer, weights_only=False), copy.deepcopy(optimizer.state_dict())):
        twin = fusedopt.AdamW(twins, lr=1e-2)
        twin.load_state_dict(copied)
        for p, q in zip(params, twins):
            for key in ("exp_avg", "exp_avg_sq"):
                assert isinstance(twin.state[q][key], DTensor)
                assert torch.equal(twin.state[q][key].full_tensor(), optimizer.state[p][key].full_tensor()), key
    whole = copy.deepcopy(optimizer)
    assert [float(entry["step"]) for entry in whole.state.values()] == [1.0] * len(params)


def test_step_inside_torch_compile(generator):
    """A torch.compile'd function that steps the optimizer and its scheduler and zeroes the grads runs the fused
    step as it is (nothing of it traced into a graph) and computes bit for bit what eager calls compute."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    params = make_params(torch.float32, generator, shapes=[(64, 32), (33,)])
    twins = clone_params(params)
    compiled_optimizer, eager_optimizer = fusedopt.AdamW(params, lr=1e-2), fusedopt.AdamW(twins, lr=1e-2)
    compiled_scheduler = torch.optim.lr_scheduler.StepLR(compiled_optimizer, step_size=1, gamma=0.5)
    eager_scheduler = torch.optim.lr_scheduler.StepLR(eager_optimizer, step_size=1, gamma=0.5)
    counter = CompileCounter()

    @torch.compile(backend=counter)
    def compiled_step():
        compiled_optimizer.step()
        compiled_scheduler.step()
        compiled_optimizer.zero_grad()

    for _ in range(3):
        for p, q in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        compiled_step()
        eager_optimizer.step()
        eager_scheduler.step()
        assert all(p.grad is None for p in params)  # zero_grad from the plan after the first step
    assert counter.op_count == 0
    for p, q in zip(params, twins):
        assert torch.equal(p, q)
    assert compiled_optimizer.param_groups[0]["lr"] == eager_optimizer.param_groups[0]["lr"] == 1e-2 / 8


def test_step_hooks_fire_on_every_step(generator):
    """torch.optim's step hooks (per optimizer, pre and post, and global) run around regular and planned steps."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((5,), (3, 2))]
    optimizer = fusedopt.AdamW(params, lr=1e-2)
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(("pre", len(opt.state))))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.append(("post", len(opt.state))))
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: seen.append(("global", opt is optimizer)))
    try:
        for _ in range(3):  # a regular step, then planned ones
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
    finally:
        handle.remove()
    assert optimizer._step_plans
    assert seen == [("pre", 0), ("post", 2), ("global", True)] + [("pre", 2), ("post", 2), ("global", True)] * 2
