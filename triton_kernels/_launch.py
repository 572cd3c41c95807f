"""The multi-tensor launch every Triton optimizer kernel shares: the host-side table and its cache, the checks, and
what each program starts and ends with.

NOTE [multi-tensor launch]: one launch updates every tensor of a call (all param groups of a device, dtype and
state layout: NOTE [param groups in one launch] in csrc/common/binding_utils.h). The host builds a table per call:
the address of every operand of every tensor (one int64 row per operand), each tensor's element count, and,
its param group, and per program, which tensor it updates and where its block starts. A program loads its row,
casts the addresses to typed pointers and updates BLOCK elements: unmasked (vectorizable) when the block is full,
masked at a tensor's tail. Offsets are int64, so tensors over 2^31 elements work. Tables depend only on addresses,
sizes and group sizes, so they are cached and rebuilt only when an operand moves; what changes every step (the
learning rate, GradScaler's factor) is one float64 row per param group, uploaded per step, which each program finds
through its tensor's group. Learning rate, step and sizes are runtime data, never constexpr, so changing them never
recompiles.

NOTE [device steps] (csrc/cuda/fused_cuda.h) holds here too: step counters are float32 elements beside the params,
which the kernel reads (count + 1 makes the bias corrections, in float64) and the program that finishes last
advances, by nothing when GradScaler's found_inf is set, in which case no program writes anything. The host never
reads a counter or found_inf, so a step never waits for the GPU.

Installed as fusedopt.triton_kernels (the top-level name `triton_kernels` belongs to upstream Triton).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from fusedopt.triton_kernels._numerics import TORCH_TO_TRITON, compute_dtype
from fusedopt.triton_kernels._param_modes import master_operands, rounding_block_key, rounding_key

# Elements per program and warps per program. 4096 fp32 elements over 8 warps give every thread 16 elements:
# four 16-byte loads per operand in flight. Chosen by reasoning, to be replaced by the table that
# bench/gpu_check.sh measures; not autotuned at run time, because a tuning run would apply the in-place
# update several times to data it cannot restore through the address table.
BLOCK = 4096
NUM_WARPS = 8
_ALIGN_BYTES = 16
_TABLE_CACHE_SIZE = 64


# --- what every program starts and ends with ------------------------------------------------------------------
@triton.jit
def grad_factor_of(row_value, grad_factor_scale, SCALED: tl.constexpr):
    """NOTE [grad factor]: the host part from the tensor's scalars row, times the device part when there is one."""
    if SCALED:
        return row_value * tl.load(grad_factor_scale).to(row_value.dtype)
    else:
        return row_value


@triton.jit
def block_of_program(block_tensor, block_start, numels, BLOCK: tl.constexpr):
    """(tensor index, first element, tensor numel) of this program's block."""
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(block_tensor + pid).to(tl.int64)
    start = tl.multiple_of(tl.load(block_start + pid), BLOCK)
    return t, start, tl.load(numels + t)


def _pointer_type_unwraps_constexpr() -> bool:
    try:
        tl.pointer_type(tl.constexpr(tl.float32))
    except TypeError:
        return False
    return True


# Triton 3.0 (torch 2.4's) hands a jit helper its constexpr arguments wrapped in tl.constexpr, and its pointer_type
# refuses them; later versions unwrap them there (their interpreter hands over the dtype itself).
_UNWRAP_DTYPE = tl.constexpr(not _pointer_type_unwraps_constexpr())


@triton.jit
def operand(address_table, t, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Typed pointer to operand `t` of a row of the address table; 16-byte aligned when ALIGNED says so."""
    if _UNWRAP_DTYPE:
        pointer = tl.load(address_table + t).to(tl.pointer_type(DTYPE.value))
    else:
        pointer = tl.load(address_table + t).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        # The hint goes on the pointer: on the integer address it does not survive the cast, and the loads
        # stay scalar (checked by tests/test_triton_compile.py on the compiled PTX).
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def program_operands(
    param_table, grad_table, master_table, step_table, numels, tensor_group, block_tensor, block_start, scalars,
    grad_factor_scale, ROW: tl.constexpr, SCALED: tl.constexpr, COMPUTE: tl.constexpr, PARAM: tl.constexpr,
    MASTER: tl.constexpr, PARAM_MODE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """What every optimizer kernel's program starts from: its tensor t, typed pointers to the parameter, its master
    and its gradient, a pointer to its group's hyperparameters (the group's float64 scalars row after ROW_HEADER),
    the grad factor read from that row's header (NOTE [grad factor]), the tensor's new step count (float64, NOTE
    [device steps]), the stochastic rounding key of the block (rounding_block_key), and the block's offsets, mask
    and whether the block is full (no mask needed)."""
    t, start, numel = block_of_program(block_tensor, block_start, numels, BLOCK)
    param = operand(param_table, t, PARAM, ALIGNED)
    master = operand(master_table, t, MASTER, ALIGNED)
    grad = operand(grad_table, t, PARAM, ALIGNED)
    step = tl.load(operand(step_table, t, tl.float32, False)).to(tl.float64) + 1.0
    row = scalars + tl.load(tensor_group + t).to(tl.int64) * ROW
    grad_factor = grad_factor_of(tl.load(row).to(COMPUTE), grad_factor_scale, SCALED)
    key = 0
    if PARAM_MODE == 1:
        seed_low = tl.load(row + 1).to(tl.int64)
        seed_high = tl.load(row + 2).to(tl.int64)
        key = rounding_block_key(rounding_key(seed_low, seed_high, step.to(tl.int64), t), start)
    offsets = start + tl.arange(0, BLOCK).to(tl.int64)
    hyper = row + ROW_HEADER
    return t, param, master, grad, hyper, step, key, grad_factor, offsets, offsets < numel, start + BLOCK <= numel


@triton.jit
def step_runs(found_inf, FOUND_INF: tl.constexpr):
    """False when GradScaler found an inf or NaN in this step's grads: then nothing is written (NOTE [device
    steps])."""
    if FOUND_INF:
        return tl.load(found_inf) == 0
    else:
        return tl.full((), 1, tl.int1)


@triton.jit
def finish_launch(step_table, num_tensors, finished, runs, BLOCK: tl.constexpr):
    """NOTE [device steps]: the program that finishes last adds one to every step counter of the launch (nothing
    when the step does not run) and resets the ticket. Every program read its counter before it takes its ticket
    (the barrier orders all its threads' reads before the atomic, which releases them)."""
    tl.debug_barrier()
    ticket = tl.atomic_add(finished, 1)
    if ticket == tl.num_programs(0) - 1:
        for first in range(0, num_tensors, BLOCK):
            index = first + tl.arange(0, BLOCK)
            mask = index < num_tensors
            counters = tl.load(step_table + index, mask=mask, other=0).to(tl.pointer_type(tl.float32))
            tl.store(counters, tl.load(counters, mask=mask) + runs.to(tl.float32), mask=mask)
        tl.atomic_xchg(finished, 0)


# --- host side --------------------------------------------------------------------------------------------------
class LaunchTable:
    """The device-side table of one bucket (NOTE [multi-tensor launch]), from host int64 tensors: `addresses`, one
    row per operand (the step counters' last, when the launch has them: they take no part in the `aligned`
    promise, and the table gets the ticket of NOTE [device steps], zero between launches), `numels`, and each
    tensor's param group `tensor_group` (int32)."""

    def __init__(
        self, addresses: torch.Tensor, numels: torch.Tensor, tensor_group: torch.Tensor, device: torch.device,
        aligned: bool,
    ) -> None:  # fmt: skip
        #: The host tensors, for the tables of planned steps that leave some tensors out (_plan.py).
        self.host = (addresses, numels, tensor_group)
        self.aligned = aligned
        self.addresses = _upload(even_columns(addresses), device)
        self.num_tensors = len(numels)
        counts = (numels + BLOCK - 1) // BLOCK
        if int(counts.sum()) == 0:
            counts[0] = 1  # one program (over nothing) still advances the step counters of empty tensors
        self.num_blocks = int(counts.sum())
        block_tensor = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), counts)
        first_block = torch.cumsum(counts, 0) - counts
        block_index = torch.arange(self.num_blocks, dtype=torch.int64) - first_block.repeat_interleave(counts)
        self.block_tensor = _upload(block_tensor, device)
        self.block_start = _upload(block_index * BLOCK, device)
        self.numels = _upload(numels, device)
        self.tensor_group = _upload(tensor_group, device)
        self.finished = torch.zeros(1, dtype=torch.int32, device=device)
        self.device = device
        self.built_on = current_stream(device)  # the stream these tensors were allocated on

    def record_current_stream(self) -> None:
        """NOTE [tables on other streams] (csrc/cuda/bindings_cuda.cpp): a launch on a stream other than the one the
        table was built on records its tensors with the caching allocator there, so that memory freed with the
        table (evicted from the cache, a plan made anew) is not reused while that launch is queued."""
        stream = current_stream(self.device)
        if stream != self.built_on:
            for tensor in (self.addresses, self.numels, self.tensor_group, self.block_tensor, self.block_start,
                           self.finished):  # fmt: skip
                tensor.record_stream(stream)

    @classmethod
    def of(
        cls,
        operands: Sequence[Sequence[torch.Tensor]],
        device: torch.device,
        steps: Sequence[torch.Tensor] = (),
        group_sizes: Sequence[int] = (),
    ) -> LaunchTable:
        """The table of these operands and step counters; `group_sizes` (tensors per param group, in order) give
        each tensor's group, and without them every tensor is in group 0."""
        numels = [t.numel() for t in operands[0]]
        addresses = [[t.data_ptr() for t in column] for column in operands]
        aligned = all(a % _ALIGN_BYTES == 0 for column in addresses for a in column)
        if steps:
            addresses.append([t.data_ptr() for t in steps])
        sizes = torch.tensor(list(group_sizes) or [len(numels)], dtype=torch.int64)
        tensor_group = torch.repeat_interleave(torch.arange(len(sizes), dtype=torch.int32), sizes)
        addresses = torch.tensor(addresses, dtype=torch.int64)
        return cls(addresses, torch.tensor(numels, dtype=torch.int64), tensor_group, device, aligned)

    def keeping(self, kept: torch.Tensor, param_row: torch.Tensor, grad_row: torch.Tensor, aligned: bool):
        """The table of the tensors `kept` (a boolean mask) with the params and grads at the addresses of
        `param_row` and `grad_row` (host tensors over all tensors) that are `aligned` or not: a planned step that
        leaves out the parameters without a grad (triton_kernels/_plan.py)."""
        addresses, numels, tensor_group = self.host
        addresses = addresses[:, kept]
        addresses[0], addresses[1] = param_row[kept], grad_row[kept]
        device = self.addresses.device
        return LaunchTable(addresses, numels[kept], tensor_group[kept], device, self.aligned and aligned)


def even_columns(rows: torch.Tensor) -> torch.Tensor:
    """`rows` (int64, one row per operand) with a zero column added when their count is odd, so that every row
    starts on a 16-byte boundary. Triton specializes a pointer argument on whether it is 16-byte aligned: the rows
    handed to the kernels are views of one table, so with an odd tensor count every other row would not be, and a
    count that changes from odd to even (a planned step that leaves parameters out, another bucket) would compile
    the kernel once more. The kernels never read past num_tensors."""
    return rows if rows.shape[-1] % 2 == 0 else torch.nn.functional.pad(rows, (0, 1))


def launching_on(device: torch.device) -> contextlib.AbstractContextManager:
    """NOTE [launch device]: Triton launches a kernel on the current CUDA device, on its current stream, whatever
    device the tensors it is handed live on; a bucket on another device (one process driving several GPUs, without
    torch.cuda.set_device per bucket) would run on the wrong one and fault. Launches therefore run under their
    tensors' device, as torch's own operators and the CUDA binding's DeviceGuard do; nothing changes when that is
    the current device already (or on a CPU)."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device.index)
    return contextlib.nullcontext()


def current_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The stream a launch on `device` goes to; None on a CPU (the interpreter), which has none."""
    return torch.cuda.current_stream(device) if device.type == "cuda" else None


def run_kernel(kernel: triton.JITFunction, table: LaunchTable, *args, **kwargs) -> None:
    """Launches `kernel` with `args` and `kwargs`, one program per block of `table`: under the device of the table's
    tensors (NOTE [launch device]), with the table recorded on the launch's stream when it was built on another
    (NOTE [tables on other streams]). Every Triton launch goes through here."""
    with launching_on(table.device):
        table.record_current_stream()
        kernel[(table.num_blocks,)](*args, num_warps=NUM_WARPS, **kwargs)


def _upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`host` on `device`; to a GPU from pinned memory, so that the copy is queued and the host goes on (from
    pageable memory it waits for the stream: a planned step that leaves tensors out makes a table every step)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


_tables: OrderedDict[tuple, LaunchTable] = OrderedDict()


def launch_table(
    operands: Sequence[Sequence[torch.Tensor]],
    device: torch.device,
    steps: Sequence[torch.Tensor] = (),
    group_sizes: Sequence[int] = (),
) -> LaunchTable:
    """The cached table for these exact operands, step counters and groups (same addresses and sizes) and BLOCK
    (which bench/triton_tune.py changes), built on first use."""
    key = (device, tuple(tuple(t.data_ptr() for t in column) for column in operands))
    key += (tuple(t.numel() for t in operands[0]), tuple(t.data_ptr() for t in steps), tuple(group_sizes), BLOCK)
    table = _tables.get(key)
    if table is None:
        table = LaunchTable.of(operands, device, steps, group_sizes)
        _tables[key] = table
        if len(_tables) > _TABLE_CACHE_SIZE:
            _tables.popitem(last=False)
    else:
        _tables.move_to_end(key)
    return table


def check_steps(params: Sequence[torch.Tensor], state_steps: Sequence[torch.Tensor]) -> None:
    """NOTE [device steps]: one float32 element per param, on the params' device."""
    if len(state_steps) != len(params):
        raise ValueError(f"fusedopt Triton backend: {len(params)} params but {len(state_steps)} step counters")
    device = params[0].device
    for i, step in enumerate(state_steps):
        if step.dtype != torch.float32 or step.numel() != 1 or step.device != device:
            raise ValueError(
                f"fusedopt Triton backend: steps[{i}] must be a one-element float32 tensor on {device} "
                f"(NOTE [device steps]), got {step.dtype} on {step.device}"
            )


def check_operands(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], states: Sequence[Sequence[torch.Tensor]]
) -> tuple[torch.dtype, torch.dtype]:
    """The (param, state) dtypes of a bucket, after checking that every operand is a contiguous tensor on the
    parameters' device with its parameter's size: grads of the params' dtype, every state list of the first's."""
    device, param_dtype = params[0].device, params[0].dtype
    state_dtype = states[0][0].dtype if states else param_dtype
    if param_dtype not in TORCH_TO_TRITON or state_dtype not in TORCH_TO_TRITON:
        raise TypeError(f"fusedopt Triton backend: unsupported dtypes {param_dtype} (params), {state_dtype} (state)")
    roles = [("params", params, param_dtype), ("grads", grads, param_dtype)]
    roles += [(f"states[{k}]", column, state_dtype) for k, column in enumerate(states)]
    for role, column, expected in roles:
        if len(column) != len(params):
            raise ValueError(f"fusedopt Triton backend: {len(params)} params but {len(column)} {role}")
        for i, (t, p) in enumerate(zip(column, params)):
            if t.dtype != expected:
                raise TypeError(f"fusedopt Triton backend: {role}[{i}] has dtype {t.dtype}, expected {expected}")
            if t.device != device or not t.is_contiguous() or t.numel() != p.numel():
                raise ValueError(
                    f"fusedopt Triton backend: {role}[{i}] must be a contiguous tensor on {device} with "
                    f"{p.numel()} elements like its param, got {t.numel()} on {t.device}"
                )
    return param_dtype, state_dtype


#: The first entries of every scalars row: the grad factor (NOTE [grad factor], maximize's sign included) and the
#: two 32-bit halves of the stochastic rounding seed; the optimizer's own entries follow.
ROW_HEADER = tl.constexpr(3)  # a constexpr: program_operands reads past it in the kernels


@dataclass
class Launch:
    """What every optimizer launch shares once its operands and step counters are checked."""

    table: LaunchTable
    param_row: torch.Tensor  # the params' addresses: the table's, or this step's (NOTE [step plan], _plan.py)
    grad_row: torch.Tensor  # the grads' addresses, likewise
    master_index: int  # the table row of the masters' addresses (PARAM_MODE 2, 3), else any row
    device: torch.device
    constexprs: dict  # PARAM, STATE, COMPUTE, PARAM_MODE, MASTER, ALIGNED, BLOCK, SCALED, FOUND_INF
    group_sizes: Sequence[int]  # tensors per param group (NOTE [param groups in one launch])
    rounding_seed: int
    device_grad_factor: torch.Tensor | None  # NOTE [grad factor]'s device part, read by the kernel (SCALED)
    found_inf: torch.Tensor | None  # GradScaler's found_inf, read by the kernel (FOUND_INF)

    @property
    def master_row(self) -> torch.Tensor:
        return self.table.addresses[self.master_index]

    def for_step(
        self,
        param_row: torch.Tensor,
        grad_row: torch.Tensor,
        aligned: bool,
        rounding_seed: int,
        device_grad_factor: torch.Tensor | None,
        found_inf: torch.Tensor | None,
    ) -> Launch:
        """This launch with one step's param and grad addresses (16-byte `aligned` or not) and inputs (NOTE [step
        plan], _plan.py)."""
        check_factors(self.device, device_grad_factor, found_inf)
        constexprs = dict(
            self.constexprs, ALIGNED=self.table.aligned and aligned, SCALED=device_grad_factor is not None,
            FOUND_INF=found_inf is not None,
        )  # fmt: skip
        return replace(
            self, param_row=param_row, grad_row=grad_row, rounding_seed=rounding_seed, constexprs=constexprs,
            device_grad_factor=device_grad_factor, found_inf=found_inf,
        )  # fmt: skip

    def scalars(self, group_rows: Sequence[Sequence[float]]) -> torch.Tensor:
        """Each param group's float64 row of scalars (ROW_HEADER, then the optimizer's entries), in one device
        tensor, from one row per group ([grad factor, the optimizer's entries...]; NOTE [param groups in one launch]
        in csrc/common/binding_utils.h); programs find their group's row through the table's tensor_group. float64
        keeps the bias corrections exact; the kernels cast the rest."""
        if len(group_rows) != len(self.group_sizes):
            groups = len(self.group_sizes)
            raise ValueError(f"fusedopt Triton backend: {len(group_rows)} rows of scalars for {groups} param groups")
        seed = [float(self.rounding_seed & 0xFFFFFFFF), float((self.rounding_seed >> 32) & 0xFFFFFFFF)]
        rows = torch.tensor([[row[0], *seed, *row[1:]] for row in group_rows], dtype=torch.float64)
        if self.device.type == "cuda":
            # From pageable memory the driver may wait for the stream before copying; from pinned memory the copy
            # is queued and the host goes on (a step never waits for the GPU: NOTE [device steps]).
            rows = rows.pin_memory()
        return rows.to(self.device, non_blocking=True)

    def launch_args(self, scalars: torch.Tensor) -> tuple:
        """The arguments every optimizer kernel ends with: the step row, the table, the scalars, the device grad
        factor and found_inf (any tensor stands in for an absent one: SCALED and FOUND_INF say which are real)."""
        table = self.table
        return (
            table.addresses[-1], table.numels, table.tensor_group, table.block_tensor, table.block_start,
            table.num_tensors, table.finished, scalars,
            scalars if self.device_grad_factor is None else self.device_grad_factor,
            scalars if self.found_inf is None else self.found_inf,
        )  # fmt: skip


def prepare(
    columns: Sequence[Sequence[torch.Tensor]],
    state_steps: Sequence[torch.Tensor],
    masters: Sequence[torch.Tensor],
    param_mode: int,
    rounding_seed: int,
    group_sizes: Sequence[int],
    device_grad_factor: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> Launch:
    """Checks the operands (columns[0] are the params, columns[1] the grads, the rest state), the step counters
    and the group sizes, and finds the launch table, masters included. Modifies nothing."""
    params = columns[0]
    if any(size < 0 for size in group_sizes) or sum(group_sizes) != len(params):
        raise ValueError(f"fusedopt Triton backend: group_sizes {list(group_sizes)} do not add up to {len(params)}")
    param_dtype, state_dtype = check_operands(params, columns[1], columns[2:])
    check_steps(params, state_steps)
    device, compute = params[0].device, compute_dtype(param_dtype)
    check_factors(device, device_grad_factor, found_inf)
    master_columns, master_dtype = master_operands(params, masters, param_mode)
    table = launch_table(list(columns) + master_columns, device, state_steps, group_sizes)
    constexprs = dict(
        PARAM=TORCH_TO_TRITON[param_dtype], STATE=TORCH_TO_TRITON[state_dtype], COMPUTE=TORCH_TO_TRITON[compute],
        PARAM_MODE=param_mode, MASTER=master_dtype, ALIGNED=table.aligned, BLOCK=BLOCK,
        SCALED=device_grad_factor is not None, FOUND_INF=found_inf is not None,
    )  # fmt: skip
    rows = table.addresses
    master_index = len(columns) if master_columns else 0
    return Launch(
        table, rows[0], rows[1], master_index, device, constexprs, group_sizes, rounding_seed, device_grad_factor,
        found_inf,
    )  # fmt: skip


def check_factors(device: torch.device, device_grad_factor: torch.Tensor | None, found_inf: torch.Tensor | None):
    """NOTE [grad factor]'s device part and GradScaler's found_inf: one float32 element on the params' device."""
    for name, value in (("device_grad_factor", device_grad_factor), ("found_inf", found_inf)):
        if value is not None and (value.dtype != torch.float32 or value.numel() != 1 or value.device != device):
            raise ValueError(f"fusedopt Triton backend: {name} must be a one-element float32 tensor on {device}")
