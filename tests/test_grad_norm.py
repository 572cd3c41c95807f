"""NOTE [cpu norms] (fusedopt/clip.py): the CPU extension's one-pass tensor norms behind fusedopt.clip_grad_norm_
and max_grad_norm=, against float64 norms and torch's clip_grad_norm_."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from helpers import DTensor, Shard, distribute_tensor

import fusedopt
from fusedopt import clip
from fusedopt._extensions import cpu_extension

# Around the 32K-element chunk of csrc/cpu/parallel_chunks.h, and several chunks.
SIZES = [0, 1, 7, 4095, 32767, 32768, 32769, 100_003]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
NORM_TYPES = [2.0, math.inf]


def _tensors(dtype, generator, sizes=SIZES):
    # Magnitudes from 1e-3 to 1e3, so that no tensor's norm hides another's.
    return [(torch.randn(n, generator=generator) * 10.0 ** (i % 7 - 3)).to(dtype) for i, n in enumerate(sizes)]


def _float64_norm(tensor, norm_type):
    if not tensor.numel():
        return torch.zeros((), dtype=torch.float64)
    return torch.linalg.vector_norm(tensor.double(), norm_type)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_each_norm_is_the_float64_norm(dtype, norm_type, generator):
    tensors = _tensors(dtype, generator)
    norms = cpu_extension().tensor_norms(tensors, norm_type)
    assert norms.dtype == torch.float64 and norms.shape == (len(tensors),)
    expected = torch.stack([_float64_norm(t, norm_type) for t in tensors])
    torch.testing.assert_close(norms, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_non_finite_elements(norm_type):
    """A NaN anywhere makes its tensor's norm NaN (also the infinity norm, as in torch); an inf makes it inf."""
    tensors = [torch.ones(100_003) for _ in range(4)]
    tensors[0][70_000] = float("nan")  # in a later chunk than the tensor's largest value
    tensors[1][5] = float("inf")
    tensors[2][6], tensors[2][80_000] = float("inf"), float("nan")
    norms = cpu_extension().tensor_norms(tensors, norm_type)
    assert math.isnan(norms[0]) and math.isinf(norms[1]) and math.isnan(norms[2])
    assert norms[3] == (1.0 if norm_type == math.inf else math.sqrt(100_003))


def test_declines_tensors_it_cannot_read(process_group):
    """None, and torch computes the norm, for what is not a dense, contiguous CPU tensor of the first one's dtype."""
    norms = cpu_extension().tensor_norms
    a = torch.randn(6, 4)
    mesh = torch.distributed.device_mesh.init_device_mesh("cpu", (1,))
    unreadable = [
        [a.t()], [a, a.double()], [torch.ones(3, dtype=torch.int32)], [torch.randn(3, dtype=torch.complex64)],
        [a.to_sparse()], [distribute_tensor(a, mesh, [Shard(0)])],
    ]  # fmt: skip
    for tensors in unreadable:
        assert norms(tensors, 2.0) is None
    with pytest.raises(RuntimeError, match="norm_type must be 2 or inf"):
        norms([a], 1.0)
    assert isinstance(distribute_tensor(a, mesh, [Shard(0)]), DTensor)


def test_same_result_with_any_thread_count(generator):
    tensors = _tensors(torch.float32, generator, [1_000_003, 70_000, 5])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_extension().tensor_norms(tensors, 2.0)
        torch.set_num_threads(max(threads, 2))
        several = cpu_extension().tensor_norms(tensors, 2.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, several)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize(
    "dtypes",
    [[torch.float32], [torch.bfloat16], [torch.float16], [torch.float32, torch.bfloat16]],
    ids=lambda dtypes: "+".join(str(d).removeprefix("torch.") for d in dtypes),
)
def test_clip_grad_norm_matches_torch(dtypes, norm_type, generator):
    """Each grad's norm rounded to its dtype, then their norm, as torch does: torch's total within its own dtype's
    tolerance (torch accumulates in float, fusedopt in double), for one dtype and for mixed dtypes."""
    params = [torch.nn.Parameter(torch.zeros(n, dtype=dtypes[i % len(dtypes)])) for i, n in enumerate(SIZES[1:])]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, twins):
        p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)
        q.grad = p.grad.clone()
    ours = fusedopt.clip_grad_norm_(params, 0.5, norm_type=norm_type)
    theirs = torch.nn.utils.clip_grad_norm_(twins, 0.5, norm_type=norm_type)
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs)
    for p, q in zip(params, twins):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_each_norm_is_rounded_to_its_grads_dtype_first(dtype, generator):
    """As torch does, each grad's norm is rounded to the grad's dtype before the total is taken (in that dtype):
    exactly the total of the float64 norms so rounded, which the total of unrounded norms is not."""
    for _ in range(5):
        grads = [torch.randn(n, generator=generator).to(dtype) for n in (3, 70, 1000, 33_000, 5, 400, 9, 2000)]
        rounded = torch.stack([torch.linalg.vector_norm(g.double()).to(dtype) for g in grads])
        assert torch.equal(clip.total_norm(grads), torch.linalg.vector_norm(rounded))


def test_cpu_grads_take_the_one_pass(monkeypatch, generator):
    """Plain CPU grads of one dtype never reach torch._foreach_norm: not in clip_grad_norm_, not in max_grad_norm=."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch._foreach_norm was called")

    params = [torch.nn.Parameter(torch.randn(n, generator=generator)) for n in (5, 40_000, 3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, twins):
        p.grad = torch.randn(p.shape, generator=generator)
        q.grad = p.grad.clone()
    expected = torch.nn.utils.clip_grad_norm_(twins, 0.1)
    monkeypatch.setattr(torch, "_foreach_norm", refuse)
    torch.testing.assert_close(clip.total_norm([p.grad for p in params]), expected)
    optimizer = fusedopt.AdamW(params, max_grad_norm=0.1)
    for _ in range(3):  # a regular step, then planned ones
        optimizer.step()
    torch.testing.assert_close(optimizer.last_grad_norm, expected)


def test_more_accurate_than_float_accumulation(generator):
    """One large float32 grad: fusedopt's norm is the float64 norm rounded to float32 (torch's float accumulation on
    the CPU was off by 6e-4 of 4,000 for 16M elements on this machine)."""
    grad = torch.randn(4_000_000, generator=generator)
    exact = torch.linalg.vector_norm(grad.double())
    assert clip.total_norm([grad]) == exact.float()


def test_norm_never_starts_a_jit_build(monkeypatch, generator):
    """Without a prebuilt or already loaded CPU extension, the norm is torch's: clipping must not wait for a build."""
    from fusedopt import _extensions

    class NeverLoaded:
        def cache_info(self):
            return functools.lru_cache(maxsize=None)(lambda: None).cache_info()  # currsize 0

        def __call__(self):
            raise AssertionError("a JIT build was started")

    monkeypatch.setattr(_extensions, "_load_cpu_extension", NeverLoaded())
    monkeypatch.setattr(_extensions, "_prebuilt_cpu_extension_exists", lambda: False)
    assert _extensions.cpu_extension_if_built() is None
    calls, foreach_norm = [], torch._foreach_norm
    monkeypatch.setattr(torch, "_foreach_norm", lambda *args: calls.append(1) or foreach_norm(*args))
    grads = [torch.randn(5, generator=generator), torch.randn(3, generator=generator)]
    torch.testing.assert_close(clip.total_norm(grads), torch.linalg.vector_norm(torch.cat(grads)))
    assert calls == [1]
