"""The Triton backend against the eager reference and torch.optim.

Without a GPU these run through Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set in conftest.py),
on small awkward shapes because the interpreter is slow; with a GPU the same tests run compiled on CUDA tensors.
Covers every option combination and dtype of the CPU backend's tests, several tensors of different sizes in one
launch, a transposed parameter, a strided gradient, two param groups and a parameter without a gradient.
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch
from helpers import (
    FUSED_CLASSES,
    OPTIMIZER_CASES,
    SECOND_GROUP,
    TORCH_CLASSES,
    assert_close_detailed,
    assert_states_close,
    case_id,
    clone_params,
    count_regular_steps,
    make_params,
    run_steps,
)
from test_against_torch import assert_matches

import fusedopt
from fusedopt import functional

STEPS = 5
SMALL_SHAPES = [(0,), (), (1,), (7,), (1023,), (1025,), (3, 5, 7), (4097,)]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [pytest.mark.gpu] if DEVICE == "cuda" else []


def _on_device(params):
    return [torch.nn.Parameter(p.detach().to(DEVICE)) for p in params]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=case_id)
def test_triton_matches_reference(case, dtype, generator):
    name, kwargs = case
    params = _on_device(make_params(dtype, generator, SMALL_SHAPES))
    twins = clone_params(params)
    groups = lambda ps: [{"params": ps[:4]}, {"params": ps[4:], **SECOND_GROUP[name]}]  # noqa: E731
    fused = FUSED_CLASSES[name](groups(params), backend="triton", **kwargs)
    reference = FUSED_CLASSES[name](groups(twins), backend="reference", **kwargs)
    assert fused.backend == "triton"
    run_steps([(fused, params), (reference, twins)], STEPS, generator)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_matches(p, q, f"param {i}")
    assert_states_close(fused, reference, compare=assert_matches)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=case_id)
def test_triton_matches_torch_optim(case, dtype, generator):
    name, kwargs = case
    params = _on_device(make_params(dtype, generator, SMALL_SHAPES))
    twins = clone_params(params)
    groups = lambda ps: [{"params": ps[:4]}, {"params": ps[4:], **SECOND_GROUP[name]}]  # noqa: E731
    fused = FUSED_CLASSES[name](groups(params), backend="triton", **kwargs)
    reference = TORCH_CLASSES[name](groups(twins), foreach=False, **kwargs)
    run_steps([(fused, params), (reference, twins)], STEPS, generator)
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_close_detailed(p, q, f"param {i}")
    assert_states_close(fused, reference)


@pytest.mark.skipif(DEVICE != "cpu", reason="compares with the C++ kernel on CPU tensors; GPUs run the CUDA check")
def test_triton_matches_cpu_kernel(generator):
    """Both implement update_rules.h: the interpreted Triton kernel and the C++ loop agree closely."""
    params = make_params(torch.float32, generator, SMALL_SHAPES)
    twins = clone_params(params)
    fused = fusedopt.AdamW(params, backend="triton", amsgrad=True)
    cpu = fusedopt.AdamW(twins, backend="cpu", amsgrad=True)
    run_steps([(fused, params), (cpu, twins)], STEPS, generator)
    for i, (p, q) in enumerate(zip(params, twins)):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=f"param {i}")


def test_one_launch_for_many_tensors(generator, monkeypatch):
    """Tensors of different sizes in two param groups (with and without weight decay) are updated by exactly one
    kernel launch per step."""
    adam_module = importlib.import_module("fusedopt.triton_kernels.adam")
    launches = []
    original = adam_module._adam_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return original[grid]

    monkeypatch.setattr(adam_module, "_adam_kernel", Counting())
    params = _on_device(make_params(torch.float32, generator, [(5,), (4096,), (4097,), (13, 3)]))
    optimizer = fusedopt.AdamW([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}], backend="triton")
    run_steps([(optimizer, params)], 2, generator, skip_index=-1)
    assert len(launches) == 2
    assert launches[0] == (1 + 1 + 2 + 1 + 1,)  # blocks of 4096: 5, 4096, 4097 (two), 39, transposed 48


def _specialization(kernel, args: tuple, kwargs: dict) -> tuple:
    """What picks a compiled variant of a launch, by Triton's own rule (native_specialize_impl): each runtime
    argument's type and its alignment or value class (unless the kernel says do_not_specialize), and the constexpr
    keyword arguments."""
    import inspect

    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    not_specialized = getattr(kernel, "do_not_specialize", None) or getattr(kernel, "kwargs", {}).get(
        "do_not_specialize", ()
    )
    names = list(inspect.signature(kernel.fn).parameters)
    runtime = [
        (name, native_specialize_impl(BaseBackend, value, False, name not in not_specialized, True))
        for name, value in zip(names, args)
    ]
    return tuple(runtime), tuple(sorted((name, repr(value)) for name, value in kwargs.items()))


def test_launches_keep_one_specialization_when_lr_step_and_sizes_change(generator, monkeypatch):
    """No recompilation when the learning rate, the step or the sizes change, checked without a GPU: every launch of
    AdamW over 1, 2, 3, 16 or 17 tensors, with a scheduler and planned steps that leave parameters out, has the
    same specialization (Triton specializes integers equal to 1 or divisible by 16, and pointers on 16-byte
    alignment: the address rows start on 16-byte boundaries whatever the tensor count, and num_tensors is not
    specialized)."""
    pytest.importorskip("triton._C.libtriton", reason="Triton's native specializer")
    adam_module = importlib.import_module("fusedopt.triton_kernels.adam")
    original, keys = adam_module._adam_kernel, set()

    class Recording:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                keys.add(_specialization(original, args, kwargs))
                return original[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(adam_module, "_adam_kernel", Recording())
    for count in (1, 2, 3, 16, 17):
        params = _on_device([torch.randn(n, generator=generator) for n in range(7, 7 + 5 * count, 5)])
        optimizer = fusedopt.AdamW(params, backend="triton", lr=1e-2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
        for step in range(3):
            for i, p in enumerate(params):  # the last step leaves the first parameter out (one tensor less)
                p.grad = None if (step == 2 and i == 0 and count > 1) else torch.randn_like(p)
            optimizer.step()
            scheduler.step()
    assert len(keys) == 1, keys


def test_launch_table_uses_64_bit_offsets_and_is_cached():
    """Block starts past 2^31 elements are exact (int64); a table is reused until an operand moves."""
    from fusedopt.triton_kernels import _launch as multi_tensor

    class FakeTensor:  # stands in for a 2^31 + 5 element tensor that would not fit in this machine's memory
        def __init__(self, address, numel):
            self.address, self.size = address, numel

        def data_ptr(self):
            return self.address

        def numel(self):
            return self.size

    huge = 2**31 + 5
    columns = [[FakeTensor(1 << 40, huge), FakeTensor(1 << 41, 3)], [FakeTensor(1 << 42, huge), FakeTensor(64, 3)]]
    table = multi_tensor.launch_table(columns, torch.device("cpu"))
    blocks = -(-huge // multi_tensor.BLOCK)
    assert table.num_blocks == blocks + 1
    assert table.block_start.dtype == torch.int64
    assert int(table.block_start[blocks - 1]) == (blocks - 1) * multi_tensor.BLOCK >= 2**31  # past int32
    assert table.block_tensor.tolist()[-2:] == [0, 1] and int(table.block_start[-1]) == 0
    assert table.aligned
    assert multi_tensor.launch_table(columns, torch.device("cpu")) is table
    moved = [columns[0], [columns[1][0], FakeTensor(72, 3)]]
    rebuilt = multi_tensor.launch_table(moved, torch.device("cpu"))
    assert rebuilt is not table and not rebuilt.aligned  # address 72 is not 16-byte aligned


# Sizes no other test of this module steps, so that no table another test left in the cache has this test's key.
OWN_SHAPES = [(5,), (1021,), (3, 29), (4099,)]


@pytest.fixture
def two_streams(monkeypatch):
    """(build stream, side stream, a context manager that launches on a stream, the list of record_stream calls as
    (tensor address, stream)). On a GPU, real streams (the side one waits for the current one before, and the
    current one for it after); without one, two stand-ins for multi_tensor.current_stream to return."""
    from fusedopt.triton_kernels import _launch as multi_tensor

    records, record_stream = [], torch.Tensor.record_stream

    def spy(tensor, stream):
        records.append((tensor.data_ptr(), stream))
        if DEVICE == "cuda":
            record_stream(tensor, stream)

    monkeypatch.setattr(torch.Tensor, "record_stream", spy)
    if DEVICE == "cuda":
        build, side = torch.cuda.current_stream(), torch.cuda.Stream()

        @contextlib.contextmanager
        def on(stream):
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                yield
            torch.cuda.current_stream().wait_stream(stream)
    else:
        build, side = "build stream", "side stream"
        current = [build]
        monkeypatch.setattr(multi_tensor, "current_stream", lambda device: current[0])

        @contextlib.contextmanager
        def on(stream):
            previous, current[0] = current[0], stream
            try:
                yield
            finally:
                current[0] = previous

    return build, side, on, records


@pytest.mark.parametrize("planned", [False, True], ids=["regular", "planned"])
def test_tables_used_on_another_stream_are_recorded_there(generator, two_streams, planned):
    """NOTE [tables on other streams] (csrc/cuda/bindings_cuda.cpp): a launch on a stream other than the one its
    cached table was built on records each of the table's tensors there, once per launch; a launch on the build
    stream records nothing. Steps alternate between the two streams and still match torch.optim."""
    build, side, on, records = two_streams
    params = _on_device(make_params(torch.float32, generator, OWN_SHAPES)[:-1])  # no transposed one: a plan
    twins = clone_params(params)
    fused = fusedopt.AdamW(params, backend="triton", weight_decay=0.1)
    reference = torch.optim.AdamW(twins, foreach=False, weight_decay=0.1)
    regular_steps = count_regular_steps(fused)
    streams = [build, side, build, side, side]
    for step, stream in enumerate(streams):
        for p, twin in zip(params, twins):
            g = torch.randn(p.shape, generator=generator).to(DEVICE)
            # Grads written in place: the table is cached for these addresses (a moved grad makes a new one).
            p.grad = g.clone() if p.grad is None else p.grad.copy_(g)
            twin.grad = g
        if not planned:
            fused._step_plans.clear()
        records.clear()
        with on(stream):
            fused.step()
        reference.step()
        expected = 6 if stream is side else 0  # addresses, numels, groups, block tensors, block starts, ticket
        assert [s for _, s in records] == [side] * expected, f"step {step}"
        assert len({address for address, _ in records}) == expected, f"step {step}"
    assert len(regular_steps) == (1 if planned else len(streams))  # the first step makes the plan
    for i, (p, twin) in enumerate(zip(params, twins)):
        assert_close_detailed(p, twin, f"params[{i}]")
    assert_states_close(fused, reference)


def test_stream_roofline_on_another_stream_records_its_table(two_streams):
    """The benchmark's roofline launch keeps NOTE [tables on other streams] too."""
    from fusedopt.backends import get_backend

    build, side, on, records = two_streams
    params, grads = _on_device([torch.randn(1031)]), _on_device([torch.randn(1031)])  # a size no other test streams
    for stream in (build, side, build):
        with on(stream):
            get_backend("triton").stream(params, grads, [])
    assert [s for _, s in records] == [side] * 6


def test_launching_on_guards_only_another_device(monkeypatch):
    """NOTE [launch device] (triton_kernels/_launch.py): a launch for tensors on a CUDA device other than the current
    one runs under that device (torch.cuda.device); on the current device or a CPU nothing is entered. A CPU
    machine has no second GPU: the current device is a stand-in."""
    from fusedopt.triton_kernels import _launch as multi_tensor

    entered = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda index: entered.append(index) or contextlib.nullcontext())
    for device in ("cuda:1", "cuda:0", "cpu", "cuda:3"):
        with multi_tensor.launching_on(torch.device(device)):
            pass
    assert entered == [1, 3]


@pytest.fixture
def launches_seen(monkeypatch):
    """Replaces multi_tensor.launching_on with a recorder: a list of (device, whether `watched[0]` changed inside
    the context), one per launch; set watched[0] to the tensor to watch."""
    from fusedopt.triton_kernels import _launch as multi_tensor

    seen, watched = [], [None]

    @contextlib.contextmanager
    def recording(device):
        before = watched[0].detach().clone()
        yield
        seen.append((device, not torch.equal(before, watched[0].detach())))

    monkeypatch.setattr(multi_tensor, "launching_on", recording)
    return seen, watched


@pytest.mark.parametrize("planned", [False, True], ids=["regular", "planned"])
@pytest.mark.parametrize("name", ["AdamW", "RMSprop", "Adagrad"])
def test_every_launch_runs_under_its_tensors_device(launches_seen, generator, name, planned):
    """NOTE [launch device]: each optimizer's kernel is launched inside launching_on(the device of its tensors), on
    the regular and the planned path: the parameters change inside that context, once per step."""
    seen, watched = launches_seen
    params = _on_device(make_params(torch.float32, generator, OWN_SHAPES)[:-1])  # no transposed one: a plan
    watched[0] = params[1]
    optimizer = FUSED_CLASSES[name](params, backend="triton")
    regular_steps = count_regular_steps(optimizer)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator).to(DEVICE)
        if not planned:
            optimizer._step_plans.clear()
        optimizer.step()
    assert len(regular_steps) == (1 if planned else 3)
    assert seen == [(params[0].device, True)] * 3


def test_stream_roofline_runs_under_its_tensors_device(launches_seen):
    seen, watched = launches_seen
    params, grads = _on_device([torch.randn(1031)]), _on_device([torch.randn(1031)])
    watched[0] = params[0]
    from fusedopt.backends import get_backend

    get_backend("triton").stream(params, grads, [])
    assert seen == [(params[0].device, True)]


def test_functional_stream_roofline(generator):
    params = _on_device([torch.randn(n, generator=generator) for n in (3, 5000)])
    grads = [torch.randn_like(p) for p in params]
    states = [[torch.randn_like(p) for p in params] for _ in range(2)]
    expected_params = [p + g for p, g in zip(params, grads)]
    expected_states = [[s + g for s, g in zip(column, grads)] for column in states]
    from fusedopt.backends import get_backend

    get_backend("triton").stream(params, grads, states)
    for actual, want in zip(params + states[0] + states[1], expected_params + expected_states[0] + expected_states[1]):
        torch.testing.assert_close(actual, want)


def test_functional_views_with_guards(generator):
    """Unaligned views into poisoned buffers: the kernel writes exactly the views (masked tails, no overrun)."""
    sizes, guard = [1, 7, 1023, 4099], 37
    buffers = {k: torch.full((sum(sizes) + guard * 5,), float("nan"), device=DEVICE) for k in "pgs"}
    views, offset = {k: [] for k in buffers}, guard
    for n in sizes:
        for k, buffer in buffers.items():
            view = buffer[offset : offset + n]
            view.copy_(torch.rand(n, generator=generator).to(DEVICE))
            views[k].append(view)
        offset += n + guard
    expected = {k: [v.clone() for v in vs] for k, vs in views.items()}
    kwargs = dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, eps=1e-10, maximize=False)
    steps = [torch.tensor(0.0) for _ in sizes]
    functional.adagrad(views["p"], views["g"], views["s"], steps, backend="triton", **kwargs)
    steps = [torch.tensor(0.0) for _ in sizes]
    functional.adagrad(expected["p"], expected["g"], expected["s"], steps, backend="reference", **kwargs)
    for k in "ps":
        for actual, want in zip(views[k], expected[k]):
            torch.testing.assert_close(actual, want)
        assert int(buffers[k].isnan().sum()) == guard * 5
