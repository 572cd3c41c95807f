"""Every backend against torch.optim (foreach=False) and against the eager reference, over many steps.

Covers every option combination, float32/float64/bfloat16/float16, awkward shapes (empty, scalar, 1 element,
odd sizes, 3-D, several chunks), a transposed parameter, a strided gradient, two param groups with different
hyperparameters and a parameter without a gradient.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import AVAILABLE_ON_CPU, CPU_TENSOR_BACKENDS
from helpers import (
    FUSED_CLASSES,
    OPTIMIZER_CASES,
    SECOND_GROUP,
    TORCH_CLASSES,
    assert_close_detailed,
    assert_states_close,
    build_pair,
    case_id,
    clone_params,
    make_params,
    run_steps,
)

STEPS = 20

pytestmark = pytest.mark.usefixtures("cuda_on_cpu")


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """assert_close's defaults, except that low-precision values may differ by 2 units in the last place of
    the tensor's largest magnitude: the kernels order their operations differently (the folded bias
    corrections of NOTE [folded bias correction], multiply-adds contracted into FMAs on GPUs), so a float32 result can
    differ from the eager one in its last bit and round to the neighbouring bfloat16/float16 value, and a
    difference of two such values (momentum, centered variance) carries that error of its operands."""
    tolerances = {}
    if expected.dtype in (torch.bfloat16, torch.float16):
        eps = torch.finfo(expected.dtype).eps
        scale = expected.detach().abs().max().item() if expected.numel() else 0.0
        tolerances = dict(rtol=2 * eps, atol=2 * eps * scale + 1e-5)
    assert_close_detailed(actual, expected, what, **tolerances)


FUSED_BACKENDS = [b for b in CPU_TENSOR_BACKENDS if b != "reference"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=case_id)
@pytest.mark.parametrize("backend", CPU_TENSOR_BACKENDS)
def test_matches_torch_optim(backend, case, dtype, generator):
    name, kwargs = case
    fused, params, reference, twins = build_pair(name, kwargs, dtype, backend, generator)
    run_steps([(fused, params), (reference, twins)], STEPS, generator)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_close_detailed(p, q, f"param {i}")
    assert_states_close(fused, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=case_id)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_matches_reference(backend, case, dtype, generator):
    name, kwargs = case
    params = make_params(dtype, generator)
    twins = clone_params(params)
    groups = lambda ps: [{"params": ps[:4]}, {"params": ps[4:], **SECOND_GROUP[name]}]  # noqa: E731
    fused = FUSED_CLASSES[name](groups(params), backend=backend, **kwargs)
    reference = FUSED_CLASSES[name](groups(twins), backend="reference", **kwargs)
    run_steps([(fused, params), (reference, twins)], STEPS, generator)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_matches(p, q, f"param {i}")
    assert_states_close(fused, reference, compare=assert_matches)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=case_id)
@pytest.mark.parametrize("backend", CPU_TENSOR_BACKENDS)
def test_low_precision_error_at_most_torch(backend, case, dtype, generator):
    """In bfloat16/float16, torch.optim rounds after every operation; fusedopt computes in float32 and rounds
    once. Against a float64 run of the same problem, fusedopt's error may be at most twice torch.optim's."""
    name, kwargs = case
    fused, params, reference, twins = build_pair(name, kwargs, dtype, backend, generator)
    exact_params = clone_params(params, torch.float64)
    half = len(params) // 2
    exact = TORCH_CLASSES[name](
        [{"params": exact_params[:half]}, {"params": exact_params[half:], **SECOND_GROUP[name]}],
        foreach=False,
        **kwargs,
    )
    run_steps([(fused, params), (reference, twins), (exact, exact_params)], STEPS, generator)
    for i, (p, q, e) in enumerate(zip(params, twins, exact_params)):
        if p.numel() == 0:
            continue
        fused_error = (p.double() - e).abs().max().item()
        torch_error = (q.double() - e).abs().max().item()
        ulp = torch.finfo(dtype).eps * e.abs().max().item()
        # torch.optim's float16 Adam can even produce NaN (its eps underflows to 0); fusedopt must stay finite.
        assert math.isfinite(fused_error), f"param {i}: fusedopt produced non-finite values"
        assert math.isnan(torch_error) or fused_error <= 2 * torch_error + ulp, (
            f"param {i}: fusedopt error {fused_error:.3g} vs torch.optim error {torch_error:.3g} (ulp {ulp:.3g})"
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", FUSED_BACKENDS + [b for b in AVAILABLE_ON_CPU if b == "triton"])
def test_first_moment_is_the_gradient_itself_when_beta1_is_zero(backend, dtype, generator):
    """torch.lerp's second branch (weights of 0.5 and more) is exact at weight 1: with beta1 = 0, exp_avg is the
    gradient bit for bit, as in torch.optim (start + 1 * (end - start), the first branch's formula, is not)."""
    name = "Adam"
    params = make_params(dtype, generator, [(1,), (7,), (1023,), (3, 5, 7)])
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](params, backend=backend, betas=(0.0, 0.999))
    reference = TORCH_CLASSES[name](twins, foreach=False, betas=(0.0, 0.999))
    for _ in range(3):
        run_steps([(fused, params), (reference, twins)], 1, generator, skip_index=-1, noncontiguous_index=None)
        for p, q in zip(params, twins):
            assert torch.equal(fused.state[p]["exp_avg"], p.grad)
            assert torch.equal(reference.state[q]["exp_avg"], q.grad)
