"""What tests/test_cuda.py checks on a GPU and the host emulation of the CUDA extension (NOTE [cuda host emulation])
can check without one: kernel launches per step. Not collected on a GPU, where test_cuda.py counts the real ones."""

from __future__ import annotations

import pytest
import torch
from helpers import make_params, run_steps

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
