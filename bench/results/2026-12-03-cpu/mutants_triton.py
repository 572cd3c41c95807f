# ruff: noqa: E501, E701, E702, E401
# A record of the third mutation sweep (bench/NOTES.md); run from /tmp with a clone at ROOT, not part of the package.
L = "triton_kernels/_launch.py"
N = "triton_kernels/_numerics.py"
A = "triton_kernels/adam.py"
R = "triton_kernels/rmsprop.py"
G = "triton_kernels/adagrad.py"
P = "triton_kernels/_param_modes.py"
T = (
    "tests/test_gpu_backends.py tests/test_non_finite.py tests/test_mixed_precision.py "
    "tests/test_device_steps.py tests/test_amp_and_clipping.py tests/test_state_dtype.py "
    "tests/test_functional_operands.py tests/test_launch_grouping.py tests/test_step_plan.py tests/test_triton_compile.py tests/test_triton.py -k triton"
)


def m(name, file, old, new):
    return dict(name=name, file=file, old=old, new=new, tests=T)


MUTANTS_ALL = [
    m("first program advances counters", L, "if ticket == tl.num_programs(0) - 1:", "if ticket == 0:"),
    m("ticket not reset", L, "        tl.atomic_xchg(finished, 0)\n", ""),
    m(
        "counters advance on skipped step",
        L,
        "tl.load(counters, mask=mask) + runs.to(tl.float32)",
        "tl.load(counters, mask=mask) + 1.0",
    ),
    m("found_inf ignored", L, "return tl.load(found_inf) == 0", "return tl.load(found_inf) == tl.load(found_inf)"),
    m(
        "device grad factor ignored",
        L,
        "return row_value * tl.load(grad_factor_scale).to(row_value.dtype)",
        "return row_value",
    ),
    m("group row of group 0", L, "row = scalars + tl.load(tensor_group + t).to(tl.int64) * ROW", "row = scalars"),
    m("mask one past end", L, "offsets < numel, start + BLOCK <= numel", "offsets <= numel, start + BLOCK <= numel"),
    m(
        "full block one short",
        L,
        "offsets < numel, start + BLOCK <= numel",
        "offsets < numel, start + BLOCK <= numel + 1",
    ),
    m("empty launch no program", L, "            counts[0] = 1  # one program", "            pass  # one program"),
    m(
        "bf16 round half up",
        N,
        "rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000",
        "rounded = (bits + 0x7FFF) & 0xFFFF0000",
    ),
    m(
        "bf16 round truncates",
        N,
        "rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000",
        "rounded = bits & 0xFFFF0000",
    ),
    m(
        "adam decay modes swapped",
        A,
        "if decay_mode == 2:  # DECAY_DECOUPLED",
        "if decay_mode == 1:  # DECAY_DECOUPLED",
    ),
    m(
        "adam bias correction 2 from beta1",
        A,
        "bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp(step * tl.load(h + 8)))",
        "bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp(step * tl.load(h + 7)))",
    ),
    m(
        "adam amsgrad max not stored",
        A,
        "    if AMSGRAD:\n        numerics.store(max_exp_avg_sq, offsets, mask, v_max, MASKED)\n",
        "",
    ),
    m(
        "rmsprop centered without grad_avg",
        R,
        "avg = numerics.ieee_sqrt(square_avg - grad_avg * grad_avg)",
        "avg = numerics.ieee_sqrt(square_avg)",
    ),
    m("rmsprop decays ignored", R, "decays = tl.load(h + 6) != 0", "decays = tl.load(h + 6) != tl.load(h + 6)"),
    m(
        "rmsprop momentum buffer not stored",
        R,
        "    if MOMENTUM:\n        numerics.store(momentum_buffers, offsets, mask, momentum_buffer, MASKED)\n",
        "",
    ),
    m(
        "adagrad lr_decay uses step",
        G,
        "clr = (tl.load(h + 1) / (1.0 + (step - 1.0) * tl.load(h + 2))).to(COMPUTE)",
        "clr = (tl.load(h + 1) / (1.0 + step * tl.load(h + 2))).to(COMPUTE)",
    ),
    m(
        "adagrad masked path in full blocks",
        G,
        "                           decays, COMPUTE, PARAM_MODE, False)  # fmt: skip",
        "                           decays, COMPUTE, PARAM_MODE, True)  # fmt: skip",
    ),
    m("remainder NaN branch removed", P, "        high = tl.where(value != value, 0x7FC0, high)\n", ""),
    m(
        "master param store dropped",
        P,
        "        store(master, offsets, mask, value, MASKED)\n        store(param, offsets, mask, value, MASKED)",
        "        store(master, offsets, mask, value, MASKED)",
    ),
]

DONE = {"first program advances counters", "ticket not reset", "counters advance on skipped step", "found_inf ignored"}
MUTANTS = [m for m in MUTANTS_ALL if m["name"] not in DONE]
