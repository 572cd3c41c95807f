"""The CPU kernels compute every element with the same operations (NOTE [no contraction] in
fusedopt/_build_config.py): the same values give the same bits wherever they sit in a tensor, vectorized body or
scalar tail, and whichever parameter mode holds the float32 master."""

from __future__ import annotations

import pytest
import torch
from helpers import HEAD_AND_TAIL, case_id, cases_with_every_state, masters_of_both_modes, step_with_equal_head_and_tail

CASES = cases_with_every_state(maximize=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_same_values_give_the_same_bits_at_the_head_and_the_tail(case, dtype, generator):
    name, kwargs = case
    tensors = step_with_equal_head_and_tail(name, kwargs, "cpu", dtype, generator)
    for key, value in tensors.items():
        assert torch.equal(value[:HEAD_AND_TAIL], value[-HEAD_AND_TAIL:]), f"{key}: head and tail differ"
    param = tensors["param"]
    assert not torch.equal(param[:HEAD_AND_TAIL], param[HEAD_AND_TAIL : 2 * HEAD_AND_TAIL])  # the values do differ


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_remainder_mode_holds_the_very_master_of_master_weights(case, generator):
    """Every element of every size: the remainder-mode master is the float32 master bit for bit."""
    name, kwargs = case
    params = [torch.nn.Parameter(torch.randn(n, generator=generator, dtype=torch.float64).to(torch.bfloat16))
              for n in (1, 7, 1023, 5000)]  # fmt: skip
    for master, joined, p, q in masters_of_both_modes(name, kwargs, params, "cpu", generator, steps=6):
        assert torch.equal(joined, master), f"{p.numel()} elements"
        # The parameters the model sees differ only at exact ties, which the remainder mode rounds away from zero.
        tie = (master.view(torch.int32) & 0xFFFF) == 0x8000
        assert torch.equal(q.detach()[~tie], p.detach()[~tie])
