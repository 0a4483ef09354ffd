"""Compile TVM's generated CUDA C into one fatbinary: SASS for each architecture plus PTX.

TVM calls the global function ``tvm_callback_cuda_compile`` with the CUDA source of a module;
``fatbin_compiler`` installs one that runs nvcc for this build's architectures and restores the
previous callback afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile

import tvm_ffi

from ...errors import TargetError

CALLBACK = "tvm_callback_cuda_compile"


def find_nvcc() -> str:
    for candidate in (os.environ.get("NVCC"), shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if candidate and os.path.exists(candidate):
            return candidate
    raise TargetError("nvcc not found: install the CUDA toolkit (13.x) or set NVCC=/path/to/nvcc; it is needed to "
                      "compile GPU code (not to run it)")


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    return next((line.split("release")[-1].split(",")[0].strip() for line in out.splitlines() if "release" in line), "?")


def compile_fatbin(source: str, sass: tuple[str, ...], ptx: str, nvcc: str) -> bytes:
    """nvcc ``source`` into a fatbinary with machine code for ``sass`` and PTX for ``ptx``."""
    gencode = []
    for arch in sass:
        gencode += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    gencode += ["-gencode", f"arch={ptx},code={ptx}"]
    with tempfile.TemporaryDirectory(prefix="penni-nvcc-") as tmp:
        src, out = os.path.join(tmp, "kernels.cu"), os.path.join(tmp, "kernels.fatbin")
        with open(src, "w") as f:
            f.write(source)
        proc = subprocess.run([nvcc, "--fatbin", "-O3", *gencode, "-o", out, src], capture_output=True, text=True)
        if proc.returncode != 0:
            raise TargetError(f"nvcc failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        with open(out, "rb") as f:
            return f.read()


@contextlib.contextmanager
def fatbin_compiler(sass: tuple[str, ...], ptx: str):
    """Route TVM's CUDA compilation through ``compile_fatbin`` while the block runs."""
    nvcc = find_nvcc()
    previous = tvm_ffi.get_global_func(CALLBACK, allow_missing=True)

    def compile_callback(code, target=None):
        return bytearray(compile_fatbin(code, sass, ptx, nvcc))

    tvm_ffi.register_global_func(CALLBACK, compile_callback, override=True)
    try:
        yield nvcc
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(CALLBACK, previous, override=True)
