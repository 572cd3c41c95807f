"""fusedopt's Triton kernels, one file per update rule (installed as fusedopt.triton_kernels)."""

from fusedopt.triton_kernels.adagrad import adagrad
from fusedopt.triton_kernels.adam import adam
from fusedopt.triton_kernels.rmsprop import rmsprop
from fusedopt.triton_kernels.stream import stream

__all__ = ["adam", "rmsprop", "adagrad", "stream"]
