"""Checkpoints: fusedopt and torch.optim state_dicts are interchangeable in both directions."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import CPU_TENSOR_BACKENDS
from helpers import (
    FUSED_CLASSES,
    OPTIMIZER_CASES,
    SECOND_GROUP,
    TORCH_CLASSES,
    assert_close_detailed,
    assert_states_close,
    case_id,
    clone_params,
    make_params,
    run_steps,
)

# One case per optimizer with every state tensor it can have.
FULL_STATE_CASES = [
    ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    ("RMSprop", dict(lr=1e-3, centered=True, momentum=0.9, weight_decay=0.1)),
    ("Adagrad", dict(lr=1e-2, lr_decay=0.01, initial_accumulator_value=0.1)),
]

pytestmark = pytest.mark.usefixtures("cuda_on_cpu")


def _through_bytes(state_dict):
    """Save and load as a real checkpoint would."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _groups(name, params):
    return [{"params": params[:4]}, {"params": params[4:], **SECOND_GROUP[name]}]


@pytest.mark.parametrize("direction", ["torch_to_fused", "fused_to_torch"])
@pytest.mark.parametrize("case", FULL_STATE_CASES + OPTIMIZER_CASES[:1], ids=case_id)
@pytest.mark.parametrize("backend", CPU_TENSOR_BACKENDS)
def test_resume_across_libraries(backend, case, direction, generator):
    """Train 5 steps under one library, checkpoint, resume under the other: the next 5 steps equal those of
    an uninterrupted run."""
    name, kwargs = case
    params = make_params(torch.float32, generator)
    uninterrupted_params = clone_params(params)
    first_cls, second_cls = TORCH_CLASSES[name], FUSED_CLASSES[name]
    first_kwargs, second_kwargs = dict(foreach=False), dict(backend=backend)
    if direction == "fused_to_torch":
        first_cls, second_cls = second_cls, first_cls
        first_kwargs, second_kwargs = second_kwargs, first_kwargs
    first = first_cls(_groups(name, params), **kwargs, **first_kwargs)
    uninterrupted = TORCH_CLASSES[name](_groups(name, uninterrupted_params), foreach=False, **kwargs)
    run_steps([(first, params), (uninterrupted, uninterrupted_params)], 5, generator)

    resumed_params = clone_params(params)
    second = second_cls(_groups(name, resumed_params), **kwargs, **second_kwargs)
    second.load_state_dict(_through_bytes(first.state_dict()))
    assert_states_close(second, first)
    run_steps([(second, resumed_params), (uninterrupted, uninterrupted_params)], 5, generator)
    for i, (p, q) in enumerate(zip(resumed_params, uninterrupted_params)):
        assert_close_detailed(p, q, f"param {i}")
    assert_states_close(second, uninterrupted)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_checkpoint_of_torch_2_4_decays_as_its_class(name, generator):
    """torch 2.4's Adam and AdamW groups have no decoupled_weight_decay key (newer torch's Adam has it, True in
    AdamW): loaded into fusedopt, Adam decays coupled and AdamW decoupled, as the uninterrupted torch run does."""
    params = make_params(torch.float32, generator)
    uninterrupted_params = clone_params(params)
    kwargs = dict(lr=1e-2, weight_decay=0.5)  # strong decay: coupled and decoupled differ visibly
    first = TORCH_CLASSES[name](params, foreach=False, **kwargs)
    uninterrupted = TORCH_CLASSES[name](uninterrupted_params, foreach=False, **kwargs)
    run_steps([(first, params), (uninterrupted, uninterrupted_params)], 3, generator)
    checkpoint = _through_bytes(first.state_dict())
    for group in checkpoint["param_groups"]:
        group.pop("decoupled_weight_decay", None)
    resumed_params = clone_params(params)
    second = FUSED_CLASSES[name](resumed_params, **kwargs)
    second.load_state_dict(checkpoint)
    run_steps([(second, resumed_params), (uninterrupted, uninterrupted_params)], 3, generator)
    for i, (p, q) in enumerate(zip(resumed_params, uninterrupted_params)):
        assert_close_detailed(p, q, f"param {i}")


@pytest.mark.parametrize("case", FULL_STATE_CASES, ids=case_id)
def test_state_dict_layout_matches_torch(case, generator):
    """Plain dicts with the same per-parameter keys, shapes and dtypes, and exactly the param-group keys torch.optim
    writes (fusedopt's own options are left out at their defaults, so torch.distributed.checkpoint, which requires
    every key of the state dict it loads into, loads torch.optim's checkpoints: tests/test_two_ranks.py)."""
    name, kwargs = case
    params = make_params(torch.bfloat16, generator)
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](_groups(name, params), **kwargs)
    reference = TORCH_CLASSES[name](_groups(name, twins), foreach=False, **kwargs)
    run_steps([(fused, params), (reference, twins)], 2, generator)
    fused_sd, torch_sd = fused.state_dict(), reference.state_dict()
    for fused_group, torch_group in zip(fused_sd["param_groups"], torch_sd["param_groups"]):
        assert set(fused_group) == set(torch_group)
        assert fused_group["params"] == torch_group["params"]
    for index, torch_state in torch_sd["state"].items():
        fused_state = fused_sd["state"][index]
        assert type(fused_state) is dict  # not fusedopt's TrackedEntry (NOTE [foreign state])
        assert list(fused_state) == list(torch_state)
        for key, value in torch_state.items():
            assert (fused_state[key].shape, fused_state[key].dtype, fused_state[key].device) == (
                value.shape,
                value.dtype,
                value.device,
            ), f"state[{index}][{key}]"


@pytest.mark.parametrize("case", FULL_STATE_CASES, ids=case_id)
def test_loaded_state_lives_in_flat_buffers(case, generator):
    """After load_state_dict, the state of a bucket is adopted into one flat buffer per state name."""
    name, kwargs = case
    params = make_params(torch.float32, generator)
    first = TORCH_CLASSES[name](_groups(name, params), foreach=False, **kwargs)
    run_steps([(first, params)], 2, generator)
    fused = FUSED_CLASSES[name](_groups(name, clone_params(params)), **kwargs)
    fused.load_state_dict(_through_bytes(first.state_dict()))
    for group in fused.param_groups:
        stepped = [p for p in group["params"] if fused.state[p]]
        for key in fused.state[stepped[0]]:
            if key == "step":
                continue
            _assert_one_aligned_buffer([fused.state[p][key] for p in stepped], key)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad"])
def test_fresh_state_lives_in_flat_buffers(name, generator):
    params = make_params(torch.float32, generator)
    fused = FUSED_CLASSES[name](params)
    run_steps([(fused, params)], 1, generator, skip_index=-1)
    for key in fused.state[params[0]]:
        if key != "step":
            _assert_one_aligned_buffer([fused.state[p][key] for p in params], key)


def _assert_one_aligned_buffer(views, key):
    """NOTE [flat state]: one buffer per state name and bucket, each parameter's slice on a 64-byte boundary."""
    storages = {view.untyped_storage().data_ptr() for view in views}
    assert len(storages) == 1, f"{key} of one group is spread over {len(storages)} buffers"
    misaligned = [index for index, view in enumerate(views) if view.data_ptr() % 64]
    assert not misaligned, f"{key} of parameters {misaligned} does not start on a 64-byte boundary"


def test_non_default_options_are_saved_with_their_group(generator):
    """An option that differs from its default is part of its group and of the checkpoint, and loads back."""
    params = make_params(torch.bfloat16, generator, shapes=[(3,), (4,)])
    groups = [{"params": params[:1], "state_dtype": torch.float32}, {"params": params[1:]}]
    optimizer = FUSED_CLASSES["AdamW"](groups, master_weights=True)
    saved = optimizer.state_dict()["param_groups"]
    assert [(g.get("state_dtype"), g.get("master_weights")) for g in saved] == [(torch.float32, True), (None, True)]
    twin = FUSED_CLASSES["AdamW"]([{"params": params[:1]}, {"params": params[1:]}])
    twin.load_state_dict(_through_bytes(optimizer.state_dict()))
    assert [g.get("state_dtype") for g in twin.param_groups] == [torch.float32, None]
