"""x86 target: host detection, ``--mcpu`` cross-builds, CPU kernels and schedules."""

from __future__ import annotations

from typing import Any

import tvm
from tvm.target import codegen

from ...errors import TargetError
from ...kernels.cpu import CpuKernels
from ...kernels.cpu.gemm import PRECISIONS
from ...machine import available_cores, last_level_cache_bytes
from ..base import Target
from ..common import lowering_passes
from .schedules import ScheduleRemainingOps

# LLVM's default triple on these wheels names a conda toolchain, which makes mcpu fall back to
# generic x86-64 code; always pin a plain Linux triple.
X86_TRIPLE = "x86_64-linux-gnu"


class X86Target(Target):
    """x86-64 CPU.

    Parameters
    ----------
    mcpu : str, optional
        LLVM CPU name (``skylake-avx512`` for a Xeon Gold 6136, ``znver4``, ``haswell``, ...).
        Defaults to the host CPU.
    num_threads : int, optional
        Threads the compiled code is tuned for; defaults to the host's core count.
    precision : str
        ``fp32``, or ``bf16``: the dense layers (convs and Linear) multiply bf16-rounded weights and
        activations, summing in float32 with ``vdpbf16ps`` (the CPU needs AVX512_BF16); the PENNI
        layers and everything else stay float32.
    """

    name = "x86"

    def __init__(self, mcpu: str | None = None, num_threads: int | None = None, precision: str = "fp32"):
        self.mcpu = mcpu or codegen.llvm_get_system_cpu()
        if not codegen.llvm_is_valid_cpu(self.mcpu, X86_TRIPLE):
            raise TargetError(
                f"unknown x86 CPU {self.mcpu!r} for --mcpu; use an LLVM CPU name such as "
                "skylake-avx512, icelake-server, znver4 or haswell")
        self.num_threads = num_threads or available_cores()
        self._tvm_target = tvm.target.Target(
            {"kind": "llvm", "mtriple": X86_TRIPLE, "mcpu": self.mcpu, "num-cores": self.num_threads})
        if codegen.target_has_features("avx512f", self._tvm_target):
            self._lanes, self.isa = 16, "avx512"
        elif codegen.target_has_features("avx2", self._tvm_target):
            self._lanes, self.isa = 8, "avx2"
        else:
            self._lanes, self.isa = 4, "sse"
        if precision not in PRECISIONS:
            raise TargetError(f"unknown --precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if precision == "bf16" and not codegen.target_has_features(["avx512f", "avx512bf16"], self._tvm_target):
            raise TargetError(
                f"--precision bf16 needs a CPU with AVX512_BF16 (vdpbf16ps), which {self.mcpu} lacks; compile "
                "with --precision fp32, or for a CPU that has it with --mcpu (e.g. znver4, cooperlake, "
                "sapphirerapids)")
        self.precision = precision

    @property
    def tvm_target(self) -> tvm.target.Target:
        return self._tvm_target

    @property
    def kernels(self) -> CpuKernels:
        return CpuKernels(lanes=self._lanes, threads=self.num_threads, precision=self.precision)

    @property
    def device(self) -> str:
        return "cpu"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "mcpu": self.mcpu, "mtriple": X86_TRIPLE,
                "isa": self.isa, "precision": self.precision, "tvm_target": str(self._tvm_target)}

    def lowering_passes(self, chooser=None, metaschedule_dir: str | None = None) -> list[tvm.transform.Pass]:
        return lowering_passes(self.kernels, ScheduleRemainingOps(), chooser or self.default_chooser(),
                               metaschedule_dir)

    def build(self, mod, chooser=None, metaschedule_dir=None, kernel_table=None, micro_batches=1):
        if self.precision == "bf16":  # an in-memory build resolves the micro-kernel from this process
            from ...kernels.cpu.native import load_into_process

            load_into_process()
        return super().build(mod, chooser, metaschedule_dir, kernel_table, micro_batches)

    def micro_batch_cache_bytes(self):
        # This host's last-level cache; a --mcpu cross-build assumes the deploy machine's is alike.
        return last_level_cache_bytes()

    def default_chooser(self):
        from ...tuning.chooser import CostModelChooser

        return CostModelChooser(self._lanes, self.num_threads)

    def tuning_key(self) -> str:
        suffix = "" if self.precision == "fp32" else f"-{self.precision}"
        return f"x86-{self.mcpu}-{self.isa}-{self.num_threads}t{suffix}"
