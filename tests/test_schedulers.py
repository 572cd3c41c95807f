"""lr schedulers drive fusedopt exactly as they drive torch.optim (group["lr"] is read at every step)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CPU_TENSOR_BACKENDS
from helpers import FUSED_CLASSES, TORCH_CLASSES, assert_close_detailed, clone_params, make_params, run_steps
from torch.optim import lr_scheduler

TOTAL_STEPS = 30

pytestmark = pytest.mark.usefixtures("cuda_on_cpu")


def _warmup(optimizer):
    return lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))


def _cosine(optimizer):
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=TOTAL_STEPS, eta_min=1e-5)


def _one_cycle(optimizer):
    # Cycles beta1 (Adam) or momentum (RMSprop) too; Adagrad has neither, so torch.optim needs it off there.
    cycles = "betas" in optimizer.defaults or "momentum" in optimizer.defaults
    return lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=TOTAL_STEPS + 1, cycle_momentum=cycles)


def _warmup_then_cosine(optimizer):
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=5)
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=TOTAL_STEPS - 5)
    return lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[5])


def _transformer_warmup_cosine(optimizer):
    # The LambdaLR form of get_cosine_schedule_with_warmup (Hugging Face), the most common LLM schedule.
    warmup, total = 5, TOTAL_STEPS

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return lr_scheduler.LambdaLR(optimizer, factor)


SCHEDULERS = [_warmup, _cosine, _one_cycle, _warmup_then_cosine, _transformer_warmup_cosine]


@pytest.mark.parametrize("make_scheduler", SCHEDULERS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("backend", CPU_TENSOR_BACKENDS)
def test_scheduler_drives_fused_like_torch(backend, name, make_scheduler, generator):
    params = make_params(torch.float32, generator)
    twins = clone_params(params)
    fused = FUSED_CLASSES[name](params, lr=0.01, backend=backend)
    reference = TORCH_CLASSES[name](twins, lr=0.01, foreach=False)
    fused_scheduler, torch_scheduler = make_scheduler(fused), make_scheduler(reference)
    for _ in range(TOTAL_STEPS):
        run_steps([(fused, params), (reference, twins)], 1, generator)
        fused_scheduler.step()
        torch_scheduler.step()
        assert fused_scheduler.get_last_lr() == torch_scheduler.get_last_lr()
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_close_detailed(p, q, f"param {i}")


@pytest.mark.parametrize("backend", CPU_TENSOR_BACKENDS)
def test_reduce_on_plateau(backend, generator):
    params = make_params(torch.float32, generator)
    twins = clone_params(params)
    fused = FUSED_CLASSES["AdamW"](params, lr=0.01, backend=backend)
    reference = TORCH_CLASSES["AdamW"](twins, lr=0.01, foreach=False)
    schedulers = [lr_scheduler.ReduceLROnPlateau(o, patience=1, factor=0.5) for o in (fused, reference)]
    for step in range(12):
        run_steps([(fused, params), (reference, twins)], 1, generator)
        for scheduler in schedulers:
            scheduler.step(1.0)  # a flat loss: the lr halves every other epoch
    assert fused.param_groups[0]["lr"] == reference.param_groups[0]["lr"] < 0.01
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_close_detailed(p, q, f"param {i}")


@pytest.mark.parametrize("backend", CPU_TENSOR_BACKENDS)
def test_tensor_lr(backend, generator):
    params = make_params(torch.float32, generator)
    twins = clone_params(params)
    fused = FUSED_CLASSES["AdamW"](params, lr=torch.tensor(0.01), backend=backend)
    reference = TORCH_CLASSES["AdamW"](twins, lr=torch.tensor(0.01), foreach=False)
    run_steps([(fused, params), (reference, twins)], 5, generator)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_close_detailed(p, q, f"param {i}")
