"""Non-finite and subnormal values on every CPU-testable backend: NaN and inf in grads and state end up where
torch.optim puts them, a NaN of any bit pattern reaches the parameter the model sees as NaN, in every parameter mode,
and float32 subnormals are kept, not flushed to zero.

torch.testing.assert_close treats NaN as a mismatch unless asked (equal_nan), which is why the tests elsewhere
never let a NaN through; these compare where the non-finite values are, element by element. The bit patterns
matter: a GPU's float32 arithmetic returns the canonical NaN 0x7FFFFFFF, and rounding it to bfloat16 by adding a
carry to its bits overflows into the sign bit (-0.0), a zero the model would train on while the master is NaN.
"""

from __future__ import annotations

import pytest
import torch
from conftest import AVAILABLE_ON_CPU, CPU_BACKENDS, EMULATED_CUDA
from helpers import (
    FUSED_CLASSES,
    TORCH_CLASSES,
    assert_close_detailed,
    case_id,
    cases_with_every_state,
    clone_params,
    make_params,
    run_steps,
)
from test_against_torch import assert_matches

from fusedopt import _rounding

SMALL = [(0,), (1,), (7,), (1023,), (3, 5, 7), (5000,)]
# On a GPU (bench/gpu_check.sh, marker `gpu`) the GPU backends on CUDA tensors, where float32 arithmetic makes the
# canonical NaN itself; without one every backend that runs on CPU tensors.
ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
BACKENDS = (
    ["cuda", "triton"]
    if ON_GPU
    else [b for b in CPU_BACKENDS if b != "reference"] + [b for b in AVAILABLE_ON_CPU if b == "triton"] + EMULATED_CUDA
)
# The Triton interpreter runs the kernels in numpy, which warns about the NaNs these tests make on purpose.
pytestmark = [
    pytest.mark.gpu if ON_GPU else pytest.mark.usefixtures("cuda_on_cpu"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]
# One case per optimizer with every state tensor it can have, weight decay and maximize on.
CASES = cases_with_every_state(maximize=True)
# float32 NaNs: the GPU's canonical one, all ones, torch's float('nan'), and the x86 "indefinite" with a payload.
NAN_BITS = [0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000, 0xFFC00001]
TARGET = 3  # the parameter of 1023 elements in SMALL


def device_params(dtype: torch.dtype, generator: torch.Generator) -> list[torch.Tensor]:
    return [torch.nn.Parameter(p.detach().to(DEVICE)) for p in make_params(dtype, generator, SMALL)]


def float32_from_bits(bits: list[int]) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)


def assert_same_non_finite(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """NaN, +inf and -inf in the same elements."""
    a, e = actual.detach().float(), expected.detach().float()
    for name, where in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        differ = (where(a) != where(e)).nonzero().flatten().tolist()
        assert not differ, f"{what}: {name} at different elements, e.g. {differ[:5]}"


def assert_non_finite_within(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Every element non-finite in `actual` is non-finite in `expected` too (which may have more)."""
    extra = (~torch.isfinite(actual.detach().float()) & torch.isfinite(expected.detach().float())).nonzero()
    assert not extra.numel(), f"{what}: non-finite where torch.optim is finite, e.g. {extra.flatten()[:5].tolist()}"


def assert_matches_with_nan(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """assert_matches on the finite elements, after checking the non-finite ones agree."""
    assert_same_non_finite(actual, expected, what)
    finite = torch.isfinite(expected.detach().float())
    assert_matches(actual.detach()[finite], expected.detach()[finite], what)


def step_with_non_finite_grads(optimizers_and_params, generator) -> None:
    """One step whose grads of parameter TARGET hold NaN, +inf and -inf at a few elements; the other parameters'
    grads stay finite, so their values are still compared."""
    grads = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in optimizers_and_params[0][1]]
    grads[TARGET][[0, 17, 500]] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
    for optimizer, params in optimizers_and_params:
        for p, g in zip(params, grads):
            p.grad = g.to(p.device, p.dtype)
        optimizer.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_grads_go_where_torch_optim_puts_them(backend, case, dtype, generator):
    name, kwargs = case
    params = device_params(dtype, generator)
    reference_params, torch_params = clone_params(params), clone_params(params)
    fused = FUSED_CLASSES[name](params, backend=backend, **kwargs)
    reference = FUSED_CLASSES[name](reference_params, backend="reference", **kwargs)
    torch_optimizer = TORCH_CLASSES[name](torch_params, foreach=False, **kwargs)
    everyone = [(fused, params), (reference, reference_params), (torch_optimizer, torch_params)]
    run_steps(everyone, 1, generator)
    step_with_non_finite_grads(everyone, generator)
    run_steps(everyone, 2, generator)
    assert torch.isnan(params[TARGET]).any(), "the test's non-finite grads must reach the parameter"
    # torch.optim's float16 steps overflow and divide by an eps rounded to zero on their own (see
    # test_low_precision_error_at_most_torch): there fusedopt may only have fewer non-finite values than torch.
    against_torch = assert_non_finite_within if dtype == torch.float16 else assert_same_non_finite
    for i, (p, q, t) in enumerate(zip(params, reference_params, torch_params)):
        assert_matches_with_nan(p, q, f"param {i}")
        against_torch(p, t, f"param {i} against torch.optim")
        for key, value in torch_optimizer.state[t].items():
            if key != "step":
                assert_matches_with_nan(fused.state[p][key], reference.state[q][key], f"param {i} {key}")
                against_torch(fused.state[p][key], value, f"param {i} {key} against torch.optim")


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_max_exp_avg_sq_stays_like_torch_maximum(backend, name, generator):
    """amsgrad's running maximum propagates NaN as torch.maximum does, even when the new exp_avg_sq is finite."""
    params = device_params(torch.float32, generator)
    torch_params = clone_params(params)
    fused = FUSED_CLASSES[name](params, backend=backend, amsgrad=True)
    torch_optimizer = TORCH_CLASSES[name](torch_params, foreach=False, amsgrad=True)
    run_steps([(fused, params), (torch_optimizer, torch_params)], 1, generator)
    for optimizer, ps in ((fused, params), (torch_optimizer, torch_params)):
        optimizer.state[ps[TARGET]]["max_exp_avg_sq"][[1, 2]] = float("nan")
    run_steps([(fused, params), (torch_optimizer, torch_params)], 2, generator)
    maximum = fused.state[params[TARGET]]["max_exp_avg_sq"]
    assert torch.isnan(maximum[[1, 2]]).all() and torch.isfinite(fused.state[params[TARGET]]["exp_avg_sq"]).all()
    for i, (p, t) in enumerate(zip(params, torch_params)):
        torch.testing.assert_close(p, t, equal_nan=True, msg=lambda m: f"param {i}: {m}")  # noqa: B023
        for key, value in torch_optimizer.state[t].items():
            if key != "step":
                torch.testing.assert_close(fused.state[p][key], value, equal_nan=True)


# The smallest grad magnitude per optimizer (the largest is 1.5 times it): over three steps every second moment
# (exp_avg_sq = 0.001 g^2 summed, square_avg = 0.01 g^2 summed, sum = g^2 summed) stays between about 4e-40 and
# 7e-39, subnormal (below 1.18e-38) yet with 18 or more significant bits, so that a GPU's contracted multiply-adds,
# a few units of the last place off torch's, move the update by far less than the tolerance.
SUBNORMAL_SECOND_MOMENTS = {"Adam": 1e-18, "AdamW": 1e-18, "RMSprop": 2e-19, "Adagrad": 3.2e-20}


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_subnormals_are_kept(backend, name, generator):
    """NOTE [float32 subnormals] (triton_kernels/_numerics.py): grads that make every second moment (exp_avg_sq,
    square_avg, sum) a float32 subnormal, and eps=0, so that the update divides by its square root. A kernel that
    flushes subnormals (Triton 3.0's tl.sqrt_rn, a CPU build with -ffast-math) divides by zero there; every backend
    keeps them as torch.optim does: the params match, and the second moments hold the same subnormals."""
    params = device_params(torch.float32, generator)
    torch_params = clone_params(params)
    fused = FUSED_CLASSES[name](params, backend=backend, eps=0.0)
    torch_optimizer = TORCH_CLASSES[name](torch_params, foreach=False, eps=0.0)
    for _ in range(3):
        grads = [
            (torch.rand(p.shape, generator=generator, dtype=torch.float64) * 0.5 + 1) * SUBNORMAL_SECOND_MOMENTS[name]
            * torch.randn(p.shape, generator=generator, dtype=torch.float64).sign()
            for p in params
        ]  # fmt: skip
        for optimizer, ps in ((fused, params), (torch_optimizer, torch_params)):
            for p, g in zip(ps, grads):
                p.grad = g.to(p.device, p.dtype)
            optimizer.step()
    tiny = torch.finfo(torch.float32).tiny
    for i, (p, t) in enumerate(zip(params, torch_params)):
        assert_close_detailed(p, t, f"param {i}")
        for key, value in torch_optimizer.state[t].items():
            if key in ("exp_avg_sq", "square_avg", "sum"):
                assert value.numel() == 0 or 0 < value.abs().max() < tiny, f"{key} of param {i} must be subnormal"
                # Eight units of the last place of a subnormal (2^-149 each), a hundredth of the smallest value.
                assert_close_detailed(fused.state[p][key], value, f"param {i} {key}", rtol=1e-5, atol=2**-146)


MODES = {
    "plain": dict(state_dtype=torch.float32),
    "master": dict(master_weights=True, state_dtype=torch.float32),
    "remainder": dict(master_weights="remainder", state_dtype=torch.float32),
    "stochastic": dict(stochastic_rounding=True, rounding_seed=7, state_dtype=torch.float32),
}


def poke_nans(optimizer, param, mode: str) -> list[int]:
    """Writes NAN_BITS into exp_avg (float32 state) and, for the master modes, into the master itself; returns
    the elements that hold a NaN now."""
    state = optimizer.state[param]
    state["exp_avg"][: len(NAN_BITS)] = float32_from_bits(NAN_BITS)
    poked = list(range(len(NAN_BITS)))
    if mode == "master":
        state["master_param"][10 : 10 + len(NAN_BITS)] = float32_from_bits(NAN_BITS)
        poked += range(10, 10 + len(NAN_BITS))
    elif mode == "remainder":
        # The split of 0x7FFFFFFF by a rounding carry: parameter -0.0 (0x8000), remainder -1; joined, the NaN.
        with torch.no_grad():
            param[10] = float32_from_bits([0x80000000])[0]
        state["master_remainder"][10] = -1
        assert torch.isnan(_rounding.join_master(param.detach(), state["master_remainder"])[10])
        poked.append(10)
    return poked


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_a_nan_of_any_bits_reaches_the_bfloat16_param(backend, mode, generator):
    params = device_params(torch.bfloat16, generator)
    reference_params = clone_params(params)
    fused = FUSED_CLASSES["AdamW"](params, backend=backend, **MODES[mode])
    reference = FUSED_CLASSES["AdamW"](reference_params, backend="reference", **MODES[mode])
    run_steps([(fused, params), (reference, reference_params)], 1, generator)
    poked = poke_nans(fused, params[TARGET], mode)
    assert poke_nans(reference, reference_params[TARGET], mode) == poked
    run_steps([(fused, params), (reference, reference_params)], 2, generator)
    target = params[TARGET].detach()
    assert torch.isnan(target[poked]).all(), f"elements {poked} of the bfloat16 param: {target[poked].tolist()}"
    if mode == "remainder":
        master = _rounding.join_master(target, fused.state[params[TARGET]]["master_remainder"])
        assert torch.isnan(master[poked]).all()
    for i, (p, q) in enumerate(zip(params, reference_params)):
        assert_matches_with_nan(p, q, f"param {i}")
