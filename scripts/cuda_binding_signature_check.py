"""Calls the CUDA extension's entry points the way fusedopt.functional does, on CPU tensors, without a GPU.

Run by scripts/check_cuda_extension.sh right after building the extension against a CUDA build of torch. Every
call must get past pybind11's argument matching (same names and types as functional.py passes, for one and for
several param groups) and be refused by the binding's own device check, with nothing modified: proof that the
Python and C++ signatures agree, which otherwise only a GPU run would show.
"""

from __future__ import annotations

import torch

from fusedopt import _tensors, functional
from fusedopt.backends.cuda import CudaBackend


class BuiltCuda(CudaBackend):
    """The CUDA backend, taking the extension module from this build (torch sees no GPU here)."""

    def _extension(self):
        import fusedopt._cuda_ext as ext

        return ext


def expect_device_error(call) -> None:
    try:
        call()
    except RuntimeError as error:
        if "which this backend does not update" not in str(error):
            raise
    else:
        raise AssertionError("the CUDA binding accepted CPU tensors")


def main() -> None:
    backend = BuiltCuda()
    params = [torch.randn(5), torch.randn(3)]
    ones = [torch.ones_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    before = [p.clone() for p in params]
    one_group = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.1, eps=1e-8, maximize=False, decoupled=True)
    two_groups = {k: [v, v] for k, v in one_group.items()}
    for hyper, sizes in ((one_group, None), (two_groups, [1, 1])):
        expect_device_error(lambda: functional.adam(params, ones, ones, ones, [], steps, amsgrad=False,
                                                    group_sizes=sizes, backend=backend, **hyper))  # fmt: skip
    expect_device_error(lambda: functional.rmsprop(
        params, ones, ones, [], ones, steps, lr=[1e-2] * 2, alpha=[0.99] * 2, eps=[1e-8] * 2, weight_decay=[0.0] * 2,
        momentum=[0.9] * 2, centered=False, maximize=[False] * 2, group_sizes=[1, 1], backend=backend,
    ))  # fmt: skip
    expect_device_error(lambda: functional.adagrad(
        params, ones, ones, steps, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False,
        backend=backend,
    ))  # fmt: skip
    # The planned twins (NOTE [step plan]), with the keyword arguments the optimizers' _hyperparameters() give.
    ext = backend.planned_module()
    leaves = [torch.nn.Parameter(p.clone()) for p in params]
    for leaf in leaves:
        leaf.grad = torch.ones_like(leaf)
    for kernel, columns, hyper in (
        ("adam", [ones, ones, []], dict(two_groups, amsgrad=False)),
        ("rmsprop", [ones, [], ones], dict(lr=[1e-2] * 2, alpha=[0.99] * 2, eps=[1e-8] * 2, weight_decay=[0.0] * 2,
                                           momentum=[0.9] * 2, maximize=[False] * 2, centered=False)),
        ("adagrad", [ones], dict(lr=[1e-2] * 2, lr_decay=[0.0] * 2, weight_decay=[0.0] * 2, eps=[1e-10] * 2,
                                 maximize=[False] * 2)),
    ):  # fmt: skip
        # StepOperands checks the device when it is made; the planned entry's keywords are read from its signature.
        expect_device_error(lambda: ext.StepOperands(leaves, columns, steps, [], [1, 1], 0, []))
        signature = getattr(ext, f"{kernel}_planned").__doc__.splitlines()[0]
        for name in [*hyper, "grad_factor", "device_grad_factor", "found_inf", "rounding_seed"]:
            assert f"{name}:" in signature, f"{kernel}_planned does not take {name}: {signature}"
    for method in ("gather_grads", "clear_grads", "grads"):  # what fusedopt/_step_plan.py calls on a plan's operands
        assert callable(getattr(ext.StepOperands, method, None)), f"StepOperands has no {method}"
    stream_states = _tensors.state_views(params, 0.0)
    expect_device_error(lambda: backend.stream(params, ones, [stream_states]))
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and all(float(s) == 0 for s in steps)
    print("CUDA binding signatures match fusedopt.functional and the step plan (adam, rmsprop, adagrad, stream)")


if __name__ == "__main__":
    main()
