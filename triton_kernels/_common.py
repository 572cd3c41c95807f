"""Pieces shared by the Triton kernels: storage conversions, the multi-tensor launch table, the launcher.

NOTE [multi-tensor launch]: one launch updates every tensor of a call (all param groups of a device, dtype and
state layout: NOTE [param groups in one launch] in csrc/common/binding_utils.h). The host builds a table per call:
the address of every operand of every tensor (one int64 row per operand), each tensor's element count, and,
per program, which tensor it updates and where its block starts. A program loads its row, casts the addresses
to typed pointers and updates BLOCK elements: unmasked (vectorizable) when the block is full, masked at a
tensor's tail. Offsets are int64, so tensors over 2^31 elements work. Tables depend only on addresses and sizes,
so they are cached and rebuilt only when an operand moves; learning rate, step and sizes are runtime data,
never constexpr, so changing them never recompiles.

Installed as fusedopt.triton_kernels (the top-level name `triton_kernels` belongs to upstream Triton).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Elements per program and warps per program. 4096 fp32 elements over 8 warps give every thread 16 elements:
# four 16-byte loads per operand in flight. Chosen by reasoning, to be replaced by the table that
# bench/gpu_check.sh measures; not autotuned at run time, because a tuning run would apply the in-place
# update several times to data it cannot restore through the address table.
BLOCK = 4096
NUM_WARPS = 8
_ALIGN_BYTES = 16
_TABLE_CACHE_SIZE = 64

TORCH_TO_TRITON = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


def compute_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """float64 computes in float64; every other dtype in float32."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


# --- device helpers ---------------------------------------------------------------------------------------------
@triton.jit
def round_to_bfloat16(x):
    """float32 -> bfloat16, round to nearest even, done in bits so the interpreter (which truncates) and the GPU
    agree; NaN stays a quiet NaN. The final cast is exact: the low 16 bits are already zero."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    rounded = tl.where(x != x, 0x7FC00000, rounded)
    return rounded.to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def to_storage(x, DTYPE: tl.constexpr):
    if DTYPE == tl.bfloat16:
        return round_to_bfloat16(x.to(tl.float32))
    else:
        return x.to(DTYPE)


@triton.jit
def ieee_sqrt(x):
    """Correctly rounded square root, as C++'s sqrt and torch's: Triton's tl.sqrt may be approximate in float32."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def ieee_div(x, y):
    """Correctly rounded division (Triton's float32 `/` may be approximate)."""
    if x.dtype == tl.float64:
        return x / y
    else:
        return tl.div_rn(x, y)


@triton.jit
def lerp(start, end, weight):
    """torch.lerp's formula, exact at both ends (mirrors fusedopt::lerp in update_rules.h)."""
    return tl.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1.0 - weight))


@triton.jit
def nan_max(a, b):
    """Maximum that propagates NaN like torch.maximum (mirrors fusedopt::max_of)."""
    return tl.where(a != a, a, tl.where(b != b, b, tl.maximum(a, b)))


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


@triton.jit
def operand(address_table, t, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Typed pointer to operand `t` of a row of the address table; 16-byte aligned when ALIGNED says so."""
    pointer = tl.load(address_table + t).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        # The hint goes on the pointer: on the integer address it does not survive the cast, and the loads
        # stay scalar (checked by tests/test_triton_compile.py on the compiled PTX).
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def program_operands(
    param_table, grad_table, master_table, keys, numels, block_tensor, block_start, scalars, grad_factor_scale,
    ROW: tl.constexpr, SCALED: tl.constexpr, PARAM: tl.constexpr, MASTER: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """What every optimizer kernel's program starts from: its tensor t, typed pointers to the parameter, its master
    and its gradient, its stochastic rounding key, its row of scalars and the grad factor read from it (NOTE [grad
    factor]), and the block's offsets, mask and whether the block is full (no mask needed)."""
    t, start, numel = block_of_program(block_tensor, block_start, numels, BLOCK)
    param = operand(param_table, t, PARAM, ALIGNED)
    master = operand(master_table, t, MASTER, ALIGNED)
    key = tl.load(keys + t)
    grad = operand(grad_table, t, PARAM, ALIGNED)
    row = scalars + t * ROW
    grad_factor = grad_factor_of(tl.load(row), grad_factor_scale, SCALED)
    offsets = start + tl.arange(0, BLOCK).to(tl.int64)
    return t, param, master, key, grad, row, grad_factor, offsets, offsets < numel, start + BLOCK <= numel


@triton.jit
def load(pointer, offsets, mask, MASKED: tl.constexpr, COMPUTE: tl.constexpr):
    if MASKED:
        value = tl.load(pointer + offsets, mask=mask, other=0.0)
    else:
        value = tl.load(pointer + offsets)
    return value.to(COMPUTE)


@triton.jit
def store(pointer, offsets, mask, value, MASKED: tl.constexpr):
    value = to_storage(value, pointer.dtype.element_ty)
    if MASKED:
        tl.store(pointer + offsets, value, mask=mask)
    else:
        tl.store(pointer + offsets, value)


# --- parameter modes (mirror csrc/include/fusedopt/param_rounding.h and fusedopt/_rounding.py) -----------------
@triton.jit
def mix32(x):
    """lowbias32 on int64 values holding uint32 numbers; products wrap and are masked back to 32 bits."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


@triton.jit
def rounding_bits(key, index):
    """NOTE [stochastic rounding]: the random bits of element `index` (int64) of the tensor with `key`."""
    return mix32((index & 0xFFFFFFFF) ^ mix32((key + (index >> 32)) & 0xFFFFFFFF))


@triton.jit
def load_param(param, master, offsets, mask, MASKED: tl.constexpr, COMPUTE: tl.constexpr, PARAM_MODE: tl.constexpr):
    """The value being updated: the parameter, its float32 master, or master = param bits + int16 remainder."""
    if PARAM_MODE == 2:
        return load(master, offsets, mask, MASKED, tl.float32)
    elif PARAM_MODE == 3:
        high = load(param, offsets, mask, MASKED, tl.bfloat16).to(tl.uint16, bitcast=True).to(tl.int64)
        low = load(master, offsets, mask, MASKED, tl.int16).to(tl.int64)
        bits = ((high << 16) + low) & 0xFFFFFFFF
        return bits.to(tl.uint32).to(tl.float32, bitcast=True)
    else:
        return load(param, offsets, mask, MASKED, COMPUTE)


@triton.jit
def store_param(param, master, offsets, mask, value, key, MASKED: tl.constexpr, PARAM_MODE: tl.constexpr):
    if PARAM_MODE == 2:
        store(master, offsets, mask, value, MASKED)
        store(param, offsets, mask, value, MASKED)
    elif PARAM_MODE == 3:  # NOTE [master remainder]
        bits = value.to(tl.float32).to(tl.uint32, bitcast=True).to(tl.int64)
        high = ((bits >> 16) + ((bits >> 15) & 1)) & 0xFFFF
        low = (bits & 0xFFFF).to(tl.uint16).to(tl.int16, bitcast=True)
        _store_raw(param, offsets, mask, high.to(tl.uint16).to(tl.bfloat16, bitcast=True), MASKED)
        _store_raw(master, offsets, mask, low, MASKED)
    elif PARAM_MODE == 1:  # NOTE [stochastic rounding]
        bits = value.to(tl.float32).to(tl.uint32, bitcast=True).to(tl.int64)
        rounded = (bits + (rounding_bits(key, offsets) & 0xFFFF)) >> 16
        rounded = tl.where(value != value, 0x7FC0, rounded)
        _store_raw(param, offsets, mask, rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True), MASKED)
    else:
        store(param, offsets, mask, value, MASKED)


@triton.jit
def _store_raw(pointer, offsets, mask, value, MASKED: tl.constexpr):
    if MASKED:
        tl.store(pointer + offsets, value, mask=mask)
    else:
        tl.store(pointer + offsets, value)


# --- host side --------------------------------------------------------------------------------------------------
class LaunchTable:
    """The device-side table of one bucket (NOTE [multi-tensor launch])."""

    def __init__(self, operands: Sequence[Sequence[torch.Tensor]], device: torch.device) -> None:
        numels = [t.numel() for t in operands[0]]
        addresses = [[t.data_ptr() for t in column] for column in operands]
        self.aligned = all(a % _ALIGN_BYTES == 0 for column in addresses for a in column)
        self.addresses = torch.tensor(addresses, dtype=torch.int64).to(device)
        counts = torch.tensor([-(-n // BLOCK) for n in numels], dtype=torch.int64)
        self.num_blocks = int(counts.sum())
        block_tensor = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), counts)
        first_block = torch.cumsum(counts, 0) - counts
        block_index = torch.arange(self.num_blocks, dtype=torch.int64) - first_block.repeat_interleave(counts)
        self.block_tensor = block_tensor.to(device)
        self.block_start = (block_index * BLOCK).to(device)
        self.numels = torch.tensor(numels, dtype=torch.int64).to(device)


_tables: OrderedDict[tuple, LaunchTable] = OrderedDict()


def launch_table(operands: Sequence[Sequence[torch.Tensor]], device: torch.device) -> LaunchTable:
    """The cached table for these exact operands (same addresses and sizes), built on first use."""
    key = (device, tuple(tuple(t.data_ptr() for t in column) for column in operands))
    key += (tuple(t.numel() for t in operands[0]),)
    table = _tables.get(key)
    if table is None:
        table = LaunchTable(operands, device)
        _tables[key] = table
        if len(_tables) > _TABLE_CACHE_SIZE:
            _tables.popitem(last=False)
    else:
        _tables.move_to_end(key)
    return table


def advance_steps(state_steps: Sequence[torch.Tensor]) -> list[float]:
    """Adds one to every step counter, as torch.optim does before using it, and returns the new values."""
    torch._foreach_add_(list(state_steps), 1)
    return [float(s) for s in state_steps]


def check_operands(params: Sequence[torch.Tensor], *columns: Sequence[torch.Tensor]) -> tuple[torch.dtype, torch.dtype]:
    """The (param, state) dtypes of a bucket, after checking that every operand is a contiguous tensor on the
    parameters' device with the parameter's size."""
    device, param_dtype = params[0].device, params[0].dtype
    state_dtype = columns[1][0].dtype if len(columns) > 1 else param_dtype
    if param_dtype not in TORCH_TO_TRITON or state_dtype not in TORCH_TO_TRITON:
        raise TypeError(f"fusedopt Triton backend: unsupported dtypes {param_dtype} (params), {state_dtype} (state)")
    for i, p in enumerate(params):
        if p.dtype != param_dtype:
            raise TypeError("fusedopt Triton backend: all params of one call must share a dtype")
        for k, column in enumerate(columns):
            t = column[i]
            expected = param_dtype if k == 0 else state_dtype
            if t.device != device or not t.is_contiguous() or t.numel() != p.numel() or t.dtype != expected:
                raise ValueError(
                    f"fusedopt Triton backend: operand {k} of tensor {i} must be a contiguous {expected} tensor on "
                    f"{device} with {p.numel()} elements"
                )
    return param_dtype, state_dtype


MASTER_DTYPES = {2: tl.float32, 3: tl.int16}


def param_mode_operands(params, masters, param_mode: int, steps: Sequence[float], seed: int, device: torch.device):
    """The master column (or none), the per-tensor rounding keys and the master pointer type of a launch."""
    from fusedopt import _rounding

    if param_mode in MASTER_DTYPES:
        expected = torch.float32 if param_mode == 2 else torch.int16
        if len(masters) != len(params):
            raise ValueError(f"fusedopt Triton backend: {len(params)} params but {len(masters)} masters")
        for i, (p, m) in enumerate(zip(params, masters)):
            if m.dtype != expected or m.numel() != p.numel() or not m.is_contiguous() or m.device != p.device:
                raise ValueError(
                    f"fusedopt Triton backend: masters[{i}] must be a contiguous {expected} tensor like its param"
                )
        columns = [list(masters)]
    else:
        columns = []
    keys = [_rounding.rounding_key(seed, int(t), i) if param_mode == 1 else 0 for i, t in enumerate(steps)]
    return columns, torch.tensor(keys, dtype=torch.int64).to(device), MASTER_DTYPES.get(param_mode, tl.float32)


def scalars_tensor(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per-launch or per-tensor scalars as a device tensor of the compute dtype (float64 math keeps its
    precision, unlike scalar kernel arguments, which Triton passes as float32)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


@dataclass
class Launch:
    """What every optimizer launch shares once its operands are checked and its step counters advanced."""

    steps: list[float]  # the new step count of every tensor
    table: LaunchTable
    keys: torch.Tensor  # per-tensor stochastic rounding keys
    device: torch.device
    compute: torch.dtype
    constexprs: dict  # PARAM, STATE, COMPUTE, PARAM_MODE, MASTER, ALIGNED, BLOCK, SCALED
    group_sizes: Sequence[int]  # tensors per param group (NOTE [param groups in one launch])
    device_grad_factor: torch.Tensor | None  # NOTE [grad factor]'s device part, read by the kernel (SCALED)

    @property
    def grid(self) -> tuple[int]:
        return (self.table.num_blocks,)

    @property
    def table_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.table.numels, self.table.block_tensor, self.table.block_start

    def scalars(self, values: Sequence[float]) -> torch.Tensor:
        return scalars_tensor(values, self.compute, self.device)

    def per_tensor_scalars(self, make_row: Callable[[int, float], list[float]]) -> torch.Tensor:
        """Every tensor's row of scalars, flattened into one device tensor: make_row(group, step) for its param
        group and new step (NOTE [param groups in one launch] in csrc/common/binding_utils.h), computed once per
        distinct (group, step)."""
        rows: dict[tuple[int, float], list[float]] = {}
        values: list[float] = []
        first = 0
        for group, size in enumerate(self.group_sizes):
            for step in self.steps[first : first + size]:
                row = rows.get((group, step))
                if row is None:
                    row = rows[(group, step)] = make_row(group, step)
                values += row
            first += size
        return self.scalars(values)

    def grad_factor_scale(self, placeholder: torch.Tensor) -> torch.Tensor:
        """The kernel's grad_factor_scale argument: the device factor, or any tensor when SCALED is off."""
        return placeholder if self.device_grad_factor is None else self.device_grad_factor


def prepare(
    columns: Sequence[Sequence[torch.Tensor]],
    state_steps: Sequence[torch.Tensor],
    masters: Sequence[torch.Tensor],
    param_mode: int,
    rounding_seed: int,
    group_sizes: Sequence[int],
    device_grad_factor: torch.Tensor | None = None,
) -> Launch:
    """Checks the operands (columns[0] are the params, columns[1] the grads, the rest state) and the group sizes,
    advances the step counters and finds the launch table, masters included."""
    params = columns[0]
    if any(size < 0 for size in group_sizes) or sum(group_sizes) != len(params):
        raise ValueError(f"fusedopt Triton backend: group_sizes {list(group_sizes)} do not add up to {len(params)}")
    param_dtype, state_dtype = check_operands(params, *[c for i, c in enumerate(columns) if i != 1])
    steps = advance_steps(state_steps)
    device, compute = params[0].device, compute_dtype(param_dtype)
    master_columns, keys, master_dtype = param_mode_operands(params, masters, param_mode, steps, rounding_seed, device)
    table = launch_table(list(columns) + master_columns, device)
    constexprs = dict(
        PARAM=TORCH_TO_TRITON[param_dtype], STATE=TORCH_TO_TRITON[state_dtype], COMPUTE=TORCH_TO_TRITON[compute],
        PARAM_MODE=param_mode, MASTER=master_dtype, ALIGNED=table.aligned, BLOCK=BLOCK,
        SCALED=device_grad_factor is not None,
    )  # fmt: skip
    return Launch(steps, table, keys, device, compute, constexprs, group_sizes, device_grad_factor)
