"""state_dtype=: optimizer state stored in bfloat16 (or float32 for low-precision params), computed in float32."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import AVAILABLE_ON_CPU, CPU_BACKENDS, EMULATED_CUDA
from helpers import FUSED_CLASSES, OPTIMIZER_CASES, case_id, clone_params, make_params, run_steps
from test_against_torch import assert_matches

import fusedopt

SMALL = [(0,), (1,), (7,), (1023,), (3, 5, 7), (5000,)]
BACKENDS = (
    [b for b in CPU_BACKENDS if b != "reference"] + [b for b in AVAILABLE_ON_CPU if b == "triton"] + EMULATED_CUDA
)
pytestmark = pytest.mark.usefixtures("cuda_on_cpu")
# One case per optimizer with all of its state tensors.
CASES = [c for c in OPTIMIZER_CASES if c[1].get("amsgrad") or c[1].get("centered") and c[1].get("momentum")][:3] + [
    c for c in OPTIMIZER_CASES if c[0] == "Adagrad"
][:1]


@pytest.mark.parametrize(
    "param_dtype,state_dtype",
    [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float16, torch.float32)],
    ids=str,
)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dtype_matches_reference(backend, case, param_dtype, state_dtype, generator):
    name, kwargs = case
    params = make_params(param_dtype, generator, SMALL)
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](params, backend=backend, state_dtype=state_dtype, **kwargs)
    reference = FUSED_CLASSES[name](twins, backend="reference", state_dtype=state_dtype, **kwargs)
    run_steps([(fused, params), (reference, twins)], 5, generator)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_matches(p, q, f"param {i}")
    for p, q in zip(params, twins):
        for key, value in reference.state[q].items():
            actual = fused.state[p][key]
            if key != "step":
                assert actual.dtype == state_dtype
            assert_matches(actual, value, key)


@pytest.mark.parametrize("name", ["AdamW", "RMSprop", "Adagrad"])
def test_float32_state_of_bfloat16_params_survives_a_checkpoint(name, generator):
    """torch.optim's loader would cast the float32 state to bfloat16; fusedopt keeps every bit."""
    params = make_params(torch.bfloat16, generator, SMALL)
    first = FUSED_CLASSES[name](params, state_dtype=torch.float32, **({"momentum": 0.9} if name == "RMSprop" else {}))
    run_steps([(first, params)], 3, generator)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = FUSED_CLASSES[name](clone_params(params), state_dtype=torch.float32, **(
        {"momentum": 0.9} if name == "RMSprop" else {}))  # fmt: skip
    second.load_state_dict(torch.load(buffer, weights_only=True))
    for p, q in zip(first.param_groups[0]["params"], second.param_groups[0]["params"]):
        for key, value in first.state[p].items():
            assert second.state[q][key].dtype == value.dtype
            assert torch.equal(second.state[q][key], value), key


def test_bfloat16_state_halves_state_memory(generator):
    params = make_params(torch.float32, generator, [(1000,)])
    optimizer = fusedopt.AdamW(params, state_dtype=torch.bfloat16)
    run_steps([(optimizer, params)], 1, generator, skip_index=-1)
    for key in ("exp_avg", "exp_avg_sq"):
        state = optimizer.state[params[0]][key]
        assert state.dtype == torch.bfloat16 and state.untyped_storage().nbytes() < 1000 * 4


def test_state_dtype_errors(generator):
    with pytest.raises(ValueError, match="Invalid state_dtype value: torch.float16"):
        fusedopt.Adam([torch.nn.Parameter(torch.randn(2))], state_dtype=torch.float16)
    params = make_params(torch.float64, generator, [(4,)])
    optimizer = fusedopt.Adam(params, state_dtype=torch.bfloat16)
    for p in params:
        p.grad = torch.randn_like(p)
    with pytest.raises(TypeError, match="state_dtype=torch.bfloat16 is not supported for parameter 0"):
        optimizer.step()
    assert all(not optimizer.state[p] for p in params)
