"""What tests/test_cuda.py checks on a GPU and the host emulation of the CUDA extension (NOTE [cuda host emulation])
can check without one: kernel launches per step, and which launches record their cached tables with the allocator
on another stream. Not collected on a GPU, where test_cuda.py counts the real launches."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    assert_close_detailed,
    assert_states_close,
    clone_params,
    count_regular_steps,
    make_params,
    random_grads,
    run_steps,
)  # fmt: skip

import fusedopt

pytestmark = pytest.mark.usefixtures("cuda_on_cpu")


def test_one_kernel_launch_per_step_across_param_groups(generator):
    """199 tensors in three param groups (decay, no decay, another lr and betas): one launch per step, planned or
    not; the optimizer's launch grouping puts every group in it (NOTE [param groups in one launch])."""
    from cuda_emulation import kernel_launches

    params = make_params(torch.float32, generator, [(n,) for n in range(1, 200)])[:-1]  # no transposed one: a plan
    groups = [{"params": params[:100]}, {"params": params[100:150], "weight_decay": 0.0},
              {"params": params[150:], "lr": 3e-3, "betas": (0.8, 0.95)}]  # fmt: skip
    optimizer = fusedopt.AdamW(groups, backend="cuda")
    for planned in (False, True):
        run_steps([(optimizer, params)], 1, generator, skip_index=-1, noncontiguous_index=None)
        if not planned:
            optimizer._step_plans.clear()
        before = kernel_launches()
        optimizer.step()
        assert kernel_launches() - before == 1, f"planned={planned}"
    assert len(optimizer._step_plans) == 1


# Stand-in stream handles of the emulation (cuda_emulation.set_current_stream; 0 for every other test), and sizes
# no other test steps, so that no table another test left in the cache has this test's key.
BUILD_STREAM, SIDE_STREAM, DEFAULT_STREAM = 0x5A1, 0x5A2, 0
OWN_SHAPES = [(5,), (1021,), (3, 29), (4099,)]


@pytest.mark.parametrize("planned", [False, True], ids=["regular", "planned"])
def test_tables_used_on_another_stream_are_recorded_there(generator, planned):
    """NOTE [tables on other streams] (csrc/cuda/bindings_cuda.cpp): a launch on a stream other than the one its
    cached tables were built on records them with the allocator on its own stream, once per launch; a launch on the
    build stream records nothing. Steps alternate between the two streams and still match torch.optim."""
    from cuda_emulation import set_current_stream, stream_records

    params = make_params(torch.float32, generator, OWN_SHAPES)[:-1]  # no transposed one: a plan
    twins = clone_params(params)
    fused = fusedopt.AdamW(params, backend="cuda", weight_decay=0.1)
    reference = torch.optim.AdamW(twins, foreach=False, weight_decay=0.1)
    regular_steps = count_regular_steps(fused)
    streams = [BUILD_STREAM, SIDE_STREAM, BUILD_STREAM, SIDE_STREAM, SIDE_STREAM]
    try:
        for step, stream in enumerate(streams):
            grads = random_grads(params, generator)
            for p, twin, g in zip(params, twins, grads):
                # Grads written in place: the tables are cached for these addresses (a moved grad makes new ones).
                p.grad = g.clone() if p.grad is None else p.grad.copy_(g)
                twin.grad = g.clone()
            if not planned:
                fused._step_plans.clear()
            before = {s: stream_records(s) for s in (BUILD_STREAM, SIDE_STREAM)}
            set_current_stream(stream)
            fused.step()
            set_current_stream(DEFAULT_STREAM)
            reference.step()
            expected = {BUILD_STREAM: 0, SIDE_STREAM: int(stream == SIDE_STREAM)}
            assert {s: stream_records(s) - before[s] for s in before} == expected, f"step {step}"
    finally:
        set_current_stream(DEFAULT_STREAM)
    assert len(regular_steps) == (1 if planned else len(streams))  # the first step makes the plan
    for i, (p, twin) in enumerate(zip(params, twins)):
        assert_close_detailed(p, twin, f"params[{i}]")
    assert_states_close(fused, reference)


def test_roofline_stream_on_another_stream_records_its_tables():
    """The benchmark's roofline launch (backend.stream) keeps NOTE [tables on other streams] too."""
    from cuda_emulation import set_current_stream, stream_records

    params, grads = [torch.randn(1031)], [torch.randn(1031)]  # a size no other test streams
    backend = fusedopt.backends.get_backend("cuda")
    before = {s: stream_records(s) for s in (BUILD_STREAM, SIDE_STREAM)}
    try:
        for stream in (BUILD_STREAM, SIDE_STREAM, BUILD_STREAM):
            set_current_stream(stream)
            backend.stream(params, grads, [])
    finally:
        set_current_stream(DEFAULT_STREAM)
    assert {s: stream_records(s) - before[s] for s in before} == {BUILD_STREAM: 0, SIDE_STREAM: 1}
