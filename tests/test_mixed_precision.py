"""Parameter modes for low-precision training: float32 master weights (whole, or as an int16 remainder beside a
bfloat16 parameter) and stochastic rounding, on every CPU-testable backend, against the reference."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import AVAILABLE_ON_CPU, CPU_BACKENDS, EMULATED_CUDA
from helpers import FUSED_CLASSES, SECOND_GROUP, TORCH_CLASSES, clone_params, make_params, run_steps
from test_against_torch import assert_matches

import fusedopt
from fusedopt import _rounding, functional

SMALL = [(0,), (1,), (7,), (1023,), (3, 5, 7), (5000,)]
BACKENDS = (
    [b for b in CPU_BACKENDS if b != "reference"] + [b for b in AVAILABLE_ON_CPU if b == "triton"] + EMULATED_CUDA
)
pytestmark = pytest.mark.usefixtures("cuda_on_cpu")
OPTIMIZERS = {"AdamW": dict(weight_decay=0.1), "Adam": dict(amsgrad=True), "RMSprop": dict(momentum=0.9, centered=True),
              "Adagrad": dict(lr_decay=0.01)}  # fmt: skip
MODES = {
    "master": dict(master_weights=True),
    "remainder": dict(master_weights="remainder"),
    "stochastic": dict(stochastic_rounding=True, rounding_seed=1234),
    "float16 master": dict(master_weights=True),
}
# The parameters' dtype in each mode: bfloat16, except for float16 params with a float32 master.
PARAM_DTYPES = dict.fromkeys(MODES, torch.bfloat16) | {"float16 master": torch.float16}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_mode_matches_reference(backend, name, mode, generator):
    """Two param groups that share one launch: stochastic rounding keys follow a tensor's index in the launch,
    which the reference reproduces group by group."""
    params = make_params(PARAM_DTYPES[mode], generator, SMALL)
    twins = clone_params(params)
    kwargs = {**OPTIMIZERS[name], **MODES[mode]}
    groups = lambda ps: [{"params": ps[:3]}, {"params": ps[3:], **SECOND_GROUP[name]}]  # noqa: E731
    fused = FUSED_CLASSES[name](groups(params), backend=backend, **kwargs)
    reference = FUSED_CLASSES[name](groups(twins), backend="reference", **kwargs)
    run_steps([(fused, params), (reference, twins)], 6, generator)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_matches(p, q, f"param {i}")
    for p, q in zip(params, twins):
        assert fused.state[p].keys() == reference.state[q].keys()
        for key, value in reference.state[q].items():
            actual = fused.state[p][key]
            assert actual.dtype == value.dtype, key
            if key == "master_remainder":  # compare the float32 masters these remainders stand for
                actual, value = _rounding.join_master(p.detach(), actual), _rounding.join_master(q.detach(), value)
            assert_matches(actual, value, key)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_master_weights_follow_a_float32_run(name, dtype, generator):
    """With float32 state, the float32 master evolves as float32 training of the same parameters would; the
    low-precision parameter is the master rounded to nearest even; the remainder mode (bfloat16) holds the very
    same master in 16 fewer bits."""
    params = make_params(dtype, generator, SMALL)
    remainder_params = clone_params(params)
    float32_params = clone_params(params, torch.float32)
    fp32_state = dict(state_dtype=torch.float32, **OPTIMIZERS[name])
    master = FUSED_CLASSES[name](params, master_weights=True, **fp32_state)
    remainder = FUSED_CLASSES[name](remainder_params, master_weights="remainder", **fp32_state)
    float32 = TORCH_CLASSES[name](float32_params, foreach=False, **OPTIMIZERS[name])
    both = [(master, params), (float32, float32_params)]
    run_steps(both + [(remainder, remainder_params)] if dtype == torch.bfloat16 else both, 8, generator)
    for p, r, f in zip(params, remainder_params, float32_params):
        if not master.state[p]:  # the parameter that never gets a gradient
            assert not remainder.state[r] and torch.equal(p.detach().float(), f.detach())
            continue
        master_value = master.state[p]["master_param"]
        torch.testing.assert_close(master_value, f.detach())
        assert torch.equal(p.detach(), master_value.to(dtype))
        if dtype != torch.bfloat16:
            continue
        joined = _rounding.join_master(r.detach(), remainder.state[r]["master_remainder"])
        assert torch.equal(joined, master_value)
        # the parameter the model sees is the master rounded to nearest (ties away from zero)
        assert ((r.detach().float() - joined).abs() <= joined.abs() * 2**-8).all()


@pytest.mark.parametrize("mode", ["master", "remainder", "float16 master"])
def test_master_state_survives_a_checkpoint_exactly(mode, generator):
    params = make_params(PARAM_DTYPES[mode], generator, SMALL)
    first = fusedopt.AdamW(params, **MODES[mode])
    run_steps([(first, params)], 3, generator)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed_params = clone_params(params)
    second = fusedopt.AdamW(resumed_params, **MODES[mode])
    second.load_state_dict(torch.load(buffer, weights_only=True))
    for p, q in zip(params, resumed_params):
        for key, value in first.state[p].items():
            assert second.state[q][key].dtype == value.dtype and torch.equal(second.state[q][key], value), key
    run_steps([(first, params), (second, resumed_params)], 3, generator)
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)


def test_stochastic_rounding_is_unbiased_and_reproducible():
    # 1 + 0.3 ulp of bfloat16 at 1.0: rounds up with probability 0.3.
    value = torch.full((200_000,), 1.0 + 0.3 * 2**-7)
    keys = [_rounding.rounding_key(99, 1, i) for i in range(2)]
    rounded = [
        _rounding.stochastic_round_to_bfloat16(value, _rounding.rounding_bits(k, value.numel(), value.device))
        for k in keys
    ]
    ups = (rounded[0].float() > 1.0).double()
    sigma = (0.3 * 0.7 / value.numel()) ** 0.5
    assert abs(ups.mean().item() - 0.3) < 5 * sigma
    assert set(rounded[0].float().unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert not torch.equal(rounded[0], rounded[1])  # another tensor (key), other bits


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_stochastic_rounding_keeps_small_updates_and_is_reproducible(backend, generator):
    """Updates far below half an ulp vanish under round-to-nearest but survive, on average, under stochastic
    rounding; the same seed gives the same bits, another seed other bits, and so does another tensor of the same
    call with the same values and grads (each tensor has its own key)."""

    def train(**kwargs):
        p, twin = (torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16)) for _ in range(2))
        optimizer = fusedopt.Adagrad([p, twin], lr=1e-4, backend=backend, **kwargs)  # steps of ~1e-4, ulp 2^-7
        for _ in range(20):
            p.grad, twin.grad = torch.ones_like(p), torch.ones_like(twin)
            optimizer.step()
        assert torch.equal(p, twin) == (not kwargs.get("stochastic_rounding"))
        return p.detach().float()

    nearest, stochastic = train(), train(stochastic_rounding=True, rounding_seed=3)
    assert torch.equal(nearest, torch.ones_like(nearest))  # every update lost
    expected = 1.0 - sum(1e-4 / (k**0.5) for k in range(1, 21))  # Adagrad with unit grads: lr / sqrt(t)
    assert abs(stochastic.mean().item() - expected) < 2e-4
    assert torch.equal(train(stochastic_rounding=True, rounding_seed=3), stochastic)
    assert not torch.equal(train(stochastic_rounding=True, rounding_seed=4), stochastic)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_stochastic_rounding_draws_new_bits_at_every_step(backend, generator):
    """Adagrad without lr_decay computes the same float32 values at any step count, so two copies stepped at
    different counts differ only in their rounding bits, which the step keys (NOTE [stochastic rounding])."""
    values = torch.randn(4096, generator=generator).bfloat16()
    grad = torch.randn(4096, generator=generator).bfloat16()
    rounded = []
    for step in (3.0, 7.0):
        param, state_sum = values.clone(), torch.full((4096,), 0.5)
        functional.adagrad(
            [param], [grad], [state_sum], [torch.full((1,), step)], lr=1e-3, lr_decay=0.0, weight_decay=0.0,
            eps=1e-10, maximize=False, param_mode=_rounding.STOCHASTIC, rounding_seed=5, backend=backend,
        )  # fmt: skip
        rounded.append(param)
    assert not torch.equal(rounded[0], values)  # the updates are not all lost
    assert not torch.equal(rounded[0], rounded[1])


def test_mode_errors(generator):
    p = [torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16))]
    with pytest.raises(ValueError, match="Invalid master_weights value: 'yes'"):
        fusedopt.AdamW(p, master_weights="yes")
    with pytest.raises(ValueError, match="stochastic_rounding=True rounds parameters that have no master copy"):
        fusedopt.AdamW(p, master_weights=True, stochastic_rounding=True)
    half = make_params(torch.float16, generator, [(4,)])
    optimizer = fusedopt.AdamW(half, master_weights="remainder")
    half[0].grad = torch.randn_like(half[0])
    with pytest.raises(TypeError, match="master_weights='remainder' keeps the low 16 bits"):
        optimizer.step()
    assert not optimizer.state[half[0]]


def test_float32_params_need_no_master(generator):
    params = make_params(torch.float32, generator, [(10,)])
    optimizer = fusedopt.AdamW(params, master_weights=True, stochastic_rounding=False)
    run_steps([(optimizer, params)], 1, generator, skip_index=-1)
    assert "master_param" not in optimizer.state[params[0]]
