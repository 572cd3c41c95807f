"""The hand-written CUDA backend (csrc/cuda/): one launch per bucket, device tables cached across steps."""

from __future__ import annotations

import torch

from fusedopt import _extensions


class CudaBackend:
    name = "cuda"

    def unavailable_reason(self, device: torch.device) -> str | None:
        if device.type != "cuda":
            return f"it updates CUDA tensors only, these are on {device.type}"
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return _extensions.cuda_extension_error()

    def adam(self, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr, beta1, beta2,
             weight_decay, eps, amsgrad, maximize, decoupled) -> None:  # fmt: skip
        _extensions.cuda_extension().adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr,
                                          beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled)  # fmt: skip

    def rmsprop(self, params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, *, lr, alpha, eps,
                weight_decay, momentum, centered, maximize) -> None:  # fmt: skip
        _extensions.cuda_extension().rmsprop(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps,
                                             lr, alpha, eps, weight_decay, momentum, centered, maximize)  # fmt: skip

    def adagrad(self, params, grads, state_sums, state_steps, *, lr, lr_decay, weight_decay, eps,
                maximize) -> None:  # fmt: skip
        _extensions.cuda_extension().adagrad(params, grads, state_sums, state_steps, lr, lr_decay, weight_decay,
                                             eps, maximize)  # fmt: skip

    def stream(self, params, grads, states) -> None:
        _extensions.cuda_extension().stream(params, grads, [list(column) for column in states])
