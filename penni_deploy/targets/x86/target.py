"""x86 target: host detection, ``--mcpu`` cross-builds, CPU kernels and schedules."""

from __future__ import annotations

from typing import Any

import tvm
from tvm.target import codegen

from ...errors import TargetError
from ...kernels.cpu import CpuKernels
from ...machine import available_cores, last_level_cache_bytes
from ...plan.quantize import INT8_LAYERS
from ..base import Target
from ..common import lowering_passes
from .schedules import ScheduleRemainingOps

# LLVM's default triple on these wheels names a conda toolchain, which makes mcpu fall back to
# generic x86-64 code; always pin a plain Linux triple.
X86_TRIPLE = "x86_64-linux-gnu"
#: ``--precision`` values, and the LLVM features each needs beyond AVX-512F (the instruction, for errors).
PRECISIONS = {"fp32": ((), ""), "bf16": (("avx512bf16",), "AVX512_BF16 (vdpbf16ps)"),
              "int8": (("avx512bw", "avx512vl", "avx512vnni"), "AVX512_VNNI (vpdpbusd)")}



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
        layers and everything else stay float32. ``int8``: convs whose input range was calibrated
        (``calibration.py``) run on ``vpdpbusd`` (AVX512_VNNI) with int8 weights per output channel
        and uint8 activations per tensor, where that is estimated faster (``kernels/cpu/int8.py``).
    int8_layers : str
        int8 only: ``auto`` (each PENNI layer in int8 where the cost model estimates it faster than its
        float32 kernels) or ``all`` (every conv with a calibrated range in int8).
    """

    name = "x86"

    def __init__(self, mcpu: str | None = None, num_threads: int | None = None, precision: str = "fp32",
                 int8_layers: str = "auto"):
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
        features, instruction = PRECISIONS[precision]
        if features and not codegen.target_has_features(["avx512f", *features], self._tvm_target):
            examples = "znver4, cooperlake, sapphirerapids" if precision == "bf16" else "znver4, icelake-server, cascadelake"
            raise TargetError(
                f"--precision {precision} needs a CPU with {instruction}, which {self.mcpu} lacks; compile "
                f"with --precision fp32, or for a CPU that has it with --mcpu (e.g. {examples})")
        self.precision = precision
        if int8_layers not in INT8_LAYERS:
            raise TargetError(f"--int8-layers must be one of {', '.join(INT8_LAYERS)}, not {int8_layers!r}")
        if int8_layers != "auto" and precision != "int8":
            raise TargetError("--int8-layers applies to --precision int8")
        self.int8_layers = int8_layers

    @property
    def tvm_target(self) -> tvm.target.Target:
        return self._tvm_target

    @property
    def kernels(self) -> CpuKernels:
        return CpuKernels(lanes=self._lanes, threads=self.num_threads, precision=self.precision,
                          int8_layers=self.int8_layers)

    @property
    def device(self) -> str:
        return "cpu"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "mcpu": self.mcpu, "mtriple": X86_TRIPLE,
                "isa": self.isa, "precision": self.precision, "tvm_target": str(self._tvm_target)} | (
                    {"int8_layers": self.int8_layers} if self.precision == "int8" else {})

    def lowering_passes(self, chooser=None, metaschedule_dir: str | None = None) -> list[tvm.transform.Pass]:
        return lowering_passes(self.kernels, ScheduleRemainingOps(), chooser or self.default_chooser(),
                               metaschedule_dir)

    def build(self, mod, chooser=None, metaschedule_dir=None, kernel_table=None, micro_batches=1):
        if self.precision != "fp32":  # an in-memory build resolves the micro-kernels from this process
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
        # bf16 builds tune bf16 dense kernels; int8 builds keep the fp32 kernels of the layers they leave
        suffix = "-bf16" if self.precision == "bf16" else ""
        return f"x86-{self.mcpu}-{self.isa}-{self.num_threads}t{suffix}"
