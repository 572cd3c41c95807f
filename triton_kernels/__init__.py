"""fusedopt's Triton kernels, one file per update rule (installed as fusedopt.triton_kernels)."""

from fusedopt.triton_kernels._plan import StepOperands
from fusedopt.triton_kernels.adagrad import adagrad, adagrad_planned
from fusedopt.triton_kernels.adam import adam, adam_planned
from fusedopt.triton_kernels.rmsprop import rmsprop, rmsprop_planned
from fusedopt.triton_kernels.stream import stream

__all__ = ["adam", "rmsprop", "adagrad", "adam_planned", "rmsprop_planned", "adagrad_planned", "StepOperands", "stream"]
