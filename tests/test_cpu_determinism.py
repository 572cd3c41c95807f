"""The CPU kernels compute every element with the same operations (NOTE [no contraction] in
fusedopt/_build_config.py): the same values give the same bits wherever they sit in a tensor, vectorized body or
scalar tail, and whichever parameter mode holds the float32 master."""

from __future__ import annotations

import pytest
import torch
from helpers import FUSED_CLASSES, OPTIMIZER_CASES, case_id

from fusedopt import _rounding

# One case per optimizer with all of its state tensors and weight decay.
CASES = [
    c
    for c in OPTIMIZER_CASES
    if c[1].get("weight_decay")
    and (c[1].get("amsgrad") or (c[1].get("centered") and c[1].get("momentum")) or c[1].get("lr_decay"))
    and not c[1].get("maximize")
    and c[1].get("initial_accumulator_value", 0.1)
]
BLOCK = 23  # more than a 512-bit vector of float32 and less than two, so it spans a vector and a tail
LENGTH = 1000 + BLOCK


def with_block_twice(values: torch.Tensor) -> torch.Tensor:
    """LENGTH values whose first BLOCK reappear as the last BLOCK: the last ones are the tail of any vector loop."""
    values = values.clone()
    values[-BLOCK:] = values[:BLOCK]
    return values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_same_values_give_the_same_bits_at_the_head_and_the_tail(case, dtype, generator):
    name, kwargs = case
    param = torch.nn.Parameter(
        with_block_twice(torch.randn(LENGTH, generator=generator, dtype=torch.float64)).to(dtype)
    )
    optimizer = FUSED_CLASSES[name]([param], backend="cpu", **kwargs)
    for _ in range(4):
        param.grad = with_block_twice(torch.randn(LENGTH, generator=generator, dtype=torch.float64)).to(dtype)
        optimizer.step()
    tensors = {"param": param.detach(), **{k: v for k, v in optimizer.state[param].items() if k != "step"}}
    for key, value in tensors.items():
        assert torch.equal(value[:BLOCK], value[-BLOCK:]), f"{key}: head and tail differ"
    assert not torch.equal(param.detach()[:BLOCK], param.detach()[BLOCK : 2 * BLOCK])  # the values do differ


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_remainder_mode_holds_the_very_master_of_master_weights(case, generator):
    """Every element of every size: the remainder-mode master is the float32 master bit for bit."""
    name, kwargs = case
    values = [torch.randn(n, generator=generator, dtype=torch.float64) for n in (1, 7, 1023, 5000)]
    whole = [torch.nn.Parameter(v.to(torch.bfloat16)) for v in values]
    split = [torch.nn.Parameter(v.to(torch.bfloat16)) for v in values]
    common = dict(backend="cpu", state_dtype=torch.float32, **kwargs)
    master = FUSED_CLASSES[name](whole, master_weights=True, **common)
    remainder = FUSED_CLASSES[name](split, master_weights="remainder", **common)
    for _ in range(6):
        for p, q in zip(whole, split):
            p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(torch.bfloat16)
            q.grad = p.grad.clone()
        master.step()
        remainder.step()
    for p, q in zip(whole, split):
        joined = _rounding.join_master(q.detach(), remainder.state[q]["master_remainder"])
        assert torch.equal(joined, master.state[p]["master_param"]), f"{p.numel()} elements"
        # The parameters the model sees differ only at exact ties, which the remainder mode rounds away from zero.
        tie = (master.state[p]["master_param"].view(torch.int32) & 0xFFFF) == 0x8000
        assert torch.equal(q.detach()[~tie], p.detach()[~tie])
