"""`python -m fusedopt info`: what is built, what is available on this machine, and why not."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys

import torch

import fusedopt
from fusedopt import _build_config


def _nvcc_version() -> str:
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = shutil.which("nvcc") or (f"{CUDA_HOME}/bin/nvcc" if CUDA_HOME else None)
    if not nvcc:
        return "not found"
    try:
        output = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError as error:
        return f"{nvcc}: {error}"
    release = [line for line in output.splitlines() if "release" in line]
    return f"{nvcc} ({release[-1].strip() if release else 'unknown version'})"


def info() -> str:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    lines = [
        f"fusedopt {fusedopt.__version__}",
        f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"triton {triton_version}",
        f"nvcc {_nvcc_version()}",
        f"CUDA devices: {torch.cuda.device_count()}"
        + "".join(f"\n  cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())),
        "prebuilt extensions: "
        + ", ".join(
            f"{name} {'yes' if importlib.util.find_spec(name) else 'no (JIT-built on first use)'}"
            for name in (_build_config.CPU_EXTENSION_NAME, _build_config.CUDA_EXTENSION_NAME)
        ),
    ]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        lines.append(f"backends for {device} tensors:")
        for name, reason in fusedopt.available_backends(device).items():
            lines.append(f"  {name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusedopt", description=__doc__)
    parser.add_argument("command", choices=["info"], help="info: versions, built extensions, usable backends")
    parser.parse_args(argv)
    print(info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
