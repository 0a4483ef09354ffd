"""CUDA target: PENNI kernels with CUDA threads, TVM's dlight GPU schedules for the rest, and a
library embedding a fatbinary (SASS per architecture + PTX), built without a GPU or driver."""

from __future__ import annotations

from typing import Any

import tvm

from ...errors import TargetError
from ...kernels.gpu import GpuKernels
from ..base import Target
from ..common import lowering_passes
from .arch import codegen_arch, resolve_archs
from .driver_standin import ensure_cuda_codegen_runtime
from .nvcc import fatbin_compiler, find_nvcc, nvcc_version

# Host code of a CUDA artifact is VM glue only: generic x86-64 keeps it portable across hosts.
_HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}


class CudaTarget(Target):
    """NVIDIA GPUs.

    Parameters
    ----------
    arch : str, optional
        ``sm_80``, or a TVM tag such as ``nvidia/nvidia-a100``. Default: every architecture from
        sm_75 to sm_90 plus PTX for newer GPUs, in one artifact.
    """

    name = "cuda"

    def __init__(self, arch: str | None = None):
        self.sass, self.ptx = resolve_archs(arch)
        self._nvcc = find_nvcc()
        self._tvm_target = tvm.target.Target({"kind": "cuda", "arch": codegen_arch(self.sass)}, host=_HOST)

    @property
    def tvm_target(self) -> tvm.target.Target:
        return self._tvm_target

    @property
    def kernels(self) -> GpuKernels:
        return GpuKernels(on_gpu=True)

    @property
    def device(self) -> str:
        return "cuda"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "sass": list(self.sass), "ptx": self.ptx,
                "nvcc": nvcc_version(self._nvcc), "tvm_target": str(self._tvm_target)}

    def lowering_passes(self, chooser=None, metaschedule_dir: str | None = None) -> list[tvm.transform.Pass]:
        from tvm import relax
        from tvm.s_tir import dlight

        schedule = dlight.ApplyDefaultSchedule(
            dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(),
            dlight.gpu.Fallback())
        return lowering_passes(self.kernels, schedule, chooser, metaschedule_dir,
                               after_memory_planning=[relax.transform.RewriteCUDAGraph()])

    def build(self, mod: tvm.IRModule, chooser=None, metaschedule_dir: str | None = None,
              kernel_table: list | None = None, micro_batches: int = 1) -> tvm.relax.Executable:
        ensure_cuda_codegen_runtime()
        with fatbin_compiler(self.sass, self.ptx):
            return super().build(mod, chooser, metaschedule_dir, kernel_table, micro_batches)

    def check_build(self, executable: tvm.relax.Executable) -> None:
        # A wrong pipeline or a missing CUDA runtime gives a "successful" build without device code.
        kinds = _module_kinds(executable.mod)
        if "cuda" not in kinds:
            raise TargetError(f"the CUDA build produced no CUDA module (modules: {', '.join(sorted(kinds))}); "
                              "this is a compiler bug, please report it")


def _module_kinds(module) -> set[str]:
    kinds = {module.kind}
    for imported in module.imports:
        kinds |= _module_kinds(imported)
    return kinds
