# ruff: noqa: E501, E701, E702, E401
# A record of the third mutation sweep (bench/NOTES.md); run from /tmp with a clone at ROOT, not part of the package.
K = "csrc/cuda/fused_cuda_kernels.cuh"
D = "csrc/include/fusedopt/device_storage.cuh"
B = "csrc/cuda/bindings_cuda.cpp"
T = (
    "tests/test_gpu_backends.py tests/test_cuda_emulation.py tests/test_device_steps.py "
    "tests/test_mixed_precision.py tests/test_non_finite.py tests/test_state_dtype.py "
    "tests/test_amp_and_clipping.py tests/test_functional_operands.py tests/test_launch_grouping.py "
    "tests/test_state_dict.py tests/test_step_plan.py -k 'cuda and not triton'"
)


def m(name, file, old, new):
    return dict(name=name, file=file, old=old, new=new, tests=T, rebuild_cuda=True)


MUTANTS = [
    m("vector stride doubled", K, "i += int64_t{blockDim.x} * kVec)", "i += int64_t{blockDim.x} * kVec * 2)"),
    m(
        "tail skips last element",
        K,
        "for (int64_t i = scalar_begin + threadIdx.x; i < end; i += blockDim.x)",
        "for (int64_t i = scalar_begin + threadIdx.x; i < end - 1; i += blockDim.x)",
    ),
    m(
        "vector end rounded up",
        K,
        "const int64_t vector_end = begin + ((end - begin) / kVec) * kVec;",
        "const int64_t vector_end = begin + ((end - begin + kVec - 1) / kVec) * kVec;",
    ),
    m(
        "chunk end ignores numel",
        K,
        "const int64_t end = chunk.start + kChunkElements < tensor.numel ? chunk.start + kChunkElements : tensor.numel;",
        "const int64_t end = chunk.start + kChunkElements;",
    ),
    m(
        "first CTA advances counters",
        K,
        "is_last = atomicAdd(tables.finished_ctas, 1u) == gridDim.x - 1;",
        "is_last = atomicAdd(tables.finished_ctas, 1u) == 0u;",
    ),
    m("ticket not reset", K, "if (threadIdx.x == 0) *tables.finished_ctas = 0u;", ""),
    m(
        "last tensor's counter left",
        K,
        "for (int64_t i = threadIdx.x; i < tables.num_tensors; i += blockDim.x)",
        "for (int64_t i = threadIdx.x; i < tables.num_tensors - 1; i += blockDim.x)",
    ),
    m(
        "counters advance on skipped step",
        K,
        "  if (!step_skipped(tables)) {\n    for (int64_t i",
        "  if (true) {\n    for (int64_t i",
    ),
    m(
        "update on skipped step",
        K,
        "  if (!step_skipped(tables)) {\n    const double step",
        "  if (true) {\n    const double step",
    ),
    m(
        "device grad factor ignored",
        K,
        "s.grad_factor *= static_cast<decltype(s.grad_factor)>(*tables.grad_factor_scale);",
        "",
    ),
    m(
        "rounding key without tensor index",
        K,
        "rounding_key(tables.rounding_seed, static_cast<uint64_t>(step), chunk.index)",
        "rounding_key(tables.rounding_seed, static_cast<uint64_t>(step), 0)",
    ),
    m(
        "group 0 hyper for all",
        K,
        "scalars_at_step(hyper[chunk.tensor.group], step)",
        "scalars_at_step(hyper[0], step)",
    ),
    m(
        "adam L2 as decoupled",
        K,
        "return update_chunk<P, S, kStates>(tables, chunk.tensor, key, chunk.begin, chunk.end,\n                                           AdamElement<C, WeightDecayMode::kL2, kAmsgrad>{s});",
        "return update_chunk<P, S, kStates>(tables, chunk.tensor, key, chunk.begin, chunk.end,\n                                           AdamElement<C, WeightDecayMode::kDecoupled, kAmsgrad>{s});",
    ),
    m(
        "rmsprop momentum slot 1",
        K,
        "if constexpr (kMomentum) momentum_buffer = state[kStates - 1];",
        "if constexpr (kMomentum) momentum_buffer = state[1];",
    ),
    m(
        "rmsprop decay inverted",
        K,
        "    if (chunk.tensor.decay_mode != 0) {\n      return update_chunk<P, S, kStates>",
        "    if (chunk.tensor.decay_mode == 0) {\n      return update_chunk<P, S, kStates>",
    ),
    m(
        "adagrad decay inverted",
        K,
        "    if (chunk.tensor.decay_mode != 0) {\n      return update_chunk<P, S, 1>",
        "    if (chunk.tensor.decay_mode == 0) {\n      return update_chunk<P, S, 1>",
    ),
    m(
        "fp32 param bf16 state as fp32",
        K,
        "if (state == StorageType::kBFloat16) return Launch<float, __nv_bfloat16>::run(args...);",
        "if (state == StorageType::kBFloat16) return Launch<float, float>::run(args...);",
    ),
    m(
        "bf16 param fp32 state as bf16",
        K,
        "if (state == StorageType::kFloat32) return Launch<__nv_bfloat16, float>::run(args...);",
        "if (state == StorageType::kFloat32) return Launch<__nv_bfloat16, __nv_bfloat16>::run(args...);",
    ),
    m(
        "rmsprop centered-only launches momentum-only",
        K,
        "if (centered) return launch_kernel(rmsprop_kernel<P, S, true, false>, t, stream, s);",
        "if (centered) return launch_kernel(rmsprop_kernel<P, S, false, true>, t, stream, s);",
    ),
    m(
        "master param not stored",
        K,
        "    store_vector(master + i, in);\n    store_vector(param + i, in);",
        "    store_vector(master + i, in);",
    ),
    m("master loaded from param", K, "    load_vector(out, master + i);", "    load_vector(out, param + i);"),
    m("bf16 store truncates", D, "return __float2bfloat16_rn(x);", "return __float2bfloat16_rz(x);"),
    m("fp16 store truncates", D, "return __float2half_rn(x);", "return __float2half_rz(x);"),
    m(
        "stochastic bits per vector",
        K,
        "rounding_bits_in_block(block_key, i + e)",
        "rounding_bits_in_block(block_key, i)",
    ),
    m("remainder not stored", K, "    store_raw_vector(remainder + i, low);\n", ""),
    m(
        "tail state not stored",
        K,
        "    for (int k = 0; k < kStates; ++k) state[k][i] = from_compute<S>(element_state[k]);\n",
        "",
    ),
    m("vector path never taken", K, "  if (t.aligned) {", "  if (false) {"),
    m("binding chunks skip half", B, "start += kChunkElements) {", "start += 2 * kChunkElements) {"),
    m("binding no CTA for empty launch", B, "  if (chunks.empty()) chunks.push_back({0, 0});\n", ""),
    m(
        "remainder loaded without low bits",
        K,
        "out[e] = __uint_as_float(join_master(__bfloat16_as_ushort(high.value[e]), low.value[e]));",
        "out[e] = __uint_as_float(join_master(__bfloat16_as_ushort(high.value[e]), int16_t{0}));",
    ),
]
