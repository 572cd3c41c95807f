"""The fused C++ CPU backend (csrc/cpu/): one OpenMP + SIMD pass per bucket."""

from __future__ import annotations

import torch

from fusedopt import _extensions


class CpuBackend:
    name = "cpu"

    def unavailable_reason(self, device: torch.device) -> str | None:
        if device.type != "cpu":
            return f"it updates CPU tensors only, these are on {device.type}"
        return _extensions.cpu_extension_error()

    def adam(
        self,
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        *,
        lr,
        beta1,
        beta2,
        weight_decay,
        eps,
        amsgrad,
        maximize,
        decoupled,
    ) -> None:
        _extensions.cpu_extension().adam(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            state_steps,
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
            amsgrad,
            maximize,
            decoupled,
        )

    def rmsprop(
        self,
        params,
        grads,
        square_avgs,
        grad_avgs,
        momentum_buffers,
        state_steps,
        *,
        lr,
        alpha,
        eps,
        weight_decay,
        momentum,
        centered,
        maximize,
    ) -> None:
        _extensions.cpu_extension().rmsprop(
            params,
            grads,
            square_avgs,
            grad_avgs,
            momentum_buffers,
            state_steps,
            lr,
            alpha,
            eps,
            weight_decay,
            momentum,
            centered,
            maximize,
        )

    def adagrad(self, params, grads, state_sums, state_steps, *, lr, lr_decay, weight_decay, eps, maximize) -> None:
        _extensions.cpu_extension().adagrad(
            params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize
        )
