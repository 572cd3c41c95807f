"""The standalone nvcc check (scripts/check_cuda_compile.sh) compiles with the flags of the real extension build."""

from __future__ import annotations

from torch.utils import cpp_extension

from fusedopt import _build_config


def test_standalone_nvcc_flags_carry_the_flags_torch_adds_to_every_extension_build():
    assert list(_build_config.TORCH_COMMON_NVCC_FLAGS) == cpp_extension.COMMON_NVCC_FLAGS
    flags = _build_config.nvcc_standalone_flags()
    assert flags == [*cpp_extension.COMMON_NVCC_FLAGS, *_build_config.nvcc_code_flags()]
