"""Every backend stores bfloat16 and float16 values rounded to nearest with ties to even, bit for bit.

A tie lies exactly halfway between two values of the storage dtype. Rounding ties up instead of to even is one ulp
off in half of them, which comparisons with the reference within tolerance let through: a Triton mutant that rounded
ties up passed the whole bfloat16 matrix of tests/test_gpu_backends.py (bench/NOTES.md, third mutation sweep).
Adagrad's sum, stored in the parameter's dtype, makes exact ties here: each sum is a value of the dtype, the grad's
square is half an ulp there, and their float32 sum is exact (with or without a fused multiply-add), so the store's
rounding is the only one.
"""

from __future__ import annotations

import pytest
import torch
from conftest import AVAILABLE_ON_CPU, EMULATED_CUDA

from fusedopt import functional

BACKENDS = AVAILABLE_ON_CPU + EMULATED_CUDA
pytestmark = pytest.mark.usefixtures("cuda_on_cpu")

# Per dtype: its fraction bits and a base 2^e where half an ulp, 2^(e - bits - 1), is a square of a power of two.
TIES = {torch.bfloat16: (7, 0), torch.float16: (10, 1)}


@pytest.mark.parametrize("dtype", list(TIES), ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_stores_round_ties_to_even(backend, dtype):
    fraction_bits, exponent = TIES[dtype]
    ulp = 2.0 ** (exponent - fraction_bits)
    # Sums base + k ulp for k = 0..7 in turn, each plus half an ulp: even k rounds down, odd k up to the even
    # neighbour. 4,096 + 11 elements: a full Triton block and CUDA chunk (vector path) and a tail of scalar stores.
    k = (torch.arange(4096 + 11) % 8).double()
    sums = 2.0**exponent + k * ulp
    expected = 2.0**exponent + (k + k % 2) * ulp
    grad_value = (ulp / 2) ** 0.5
    assert grad_value == 2.0 ** round(torch.tensor(grad_value).log2().item())  # a power of two: its square is exact
    params = [torch.ones(len(sums), dtype=dtype)]
    grads = [torch.full_like(params[0], grad_value)]
    state_sums = [sums.to(dtype)]
    assert torch.equal(state_sums[0].double(), sums)  # every sum is a value of the dtype
    functional.adagrad(
        params, grads, state_sums, [torch.zeros(1)], lr=0.1, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
        maximize=False, backend=backend,
    )  # fmt: skip
    assert torch.equal(state_sums[0].double(), expected), (state_sums[0][:8], expected[:8])
