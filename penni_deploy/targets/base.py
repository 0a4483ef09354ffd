"""The interface every target implements.

A target turns a graph-rewritten Relax module (PENNI layers already grouped into composite
functions) into a TVM ``Executable``: it supplies the kernel generators for those composites, the
schedules for everything else and the TVM target itself. The driver (``penni_deploy.compiler``)
only calls these methods.
"""

from __future__ import annotations

import abc
from typing import Any

import tvm

from ..kernels.library import KernelLibrary


class Target(abc.ABC):
    """A compilation target (``x86``; ``cuda`` slots in beside it)."""

    #: The name users pass to ``--target``.
    name: str

    @property
    @abc.abstractmethod
    def tvm_target(self) -> tvm.target.Target:
        """The TVM target the library is built for."""

    @property
    @abc.abstractmethod
    def kernels(self) -> KernelLibrary:
        """The generators of this target's PENNI and dense-conv kernels."""

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """The TVM runtime device kind the artifact runs on (``cpu``, ``cuda``)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able facts recorded in the artifact manifest (kind, cpu, triple, ...)."""

    @abc.abstractmethod
    def lowering_passes(self, chooser=None, metaschedule_dir: str | None = None) -> list[tvm.transform.Pass]:
        """Passes from the rewritten graph to a module ready for ``tvm.compile``: kernel lowering
        (each layer as ``chooser`` decides), legalization, schedules (tuned ones from
        ``metaschedule_dir`` first), VM lowering."""

    def default_chooser(self):
        """How layers are computed without a tuning database."""
        from ..tuning.chooser import FixedChooser

        return FixedChooser()

    def tuning_key(self) -> str:
        """The machine kind tuning results are valid for."""
        from ..errors import TargetError

        raise TargetError(f"tuning is not supported for --target {self.name}; tune with --target x86")

    def micro_batch_cache_bytes(self) -> int | None:
        """The cache one layer's tensors should fit, for choosing micro-batches (``plan.micro_batch``);
        None (the default): always run the whole batch at once (what a GPU wants)."""
        return None

    def build(self, mod: tvm.IRModule, chooser=None, metaschedule_dir: str | None = None,
              kernel_table: list | None = None, micro_batches: int = 1) -> tvm.relax.Executable:
        """Lower ``mod`` with this target's passes and build it; ``kernel_table``, a list, receives the
        manifest's kernel table (``kernel_table.py``). With ``micro_batches`` k > 1 the built ``main``
        takes k times the batch of ``mod`` and runs it micro-batch by micro-batch."""
        from ..passes.repeat_over_micro_batches import RepeatOverMicroBatches
        from .kernel_table import KernelTableRecorder

        chooser = chooser or self.default_chooser()
        recorder = KernelTableRecorder()
        with self.tvm_target:  # some passes (MetaScheduleApplyDatabase) read the target when made
            passes = recorder.wrap(self.lowering_passes(chooser, metaschedule_dir))
            if micro_batches > 1:  # right after the kernel lowering: the copies then share its constants
                at = next(i for i, p in enumerate(passes) if p.info.name == "LowerLinear") + 1
                passes.insert(at, RepeatOverMicroBatches(micro_batches))
            mod = tvm.transform.Sequential(passes, name=f"{self.name}_lowering")(mod)
        if kernel_table is not None:
            kernel_table.extend(recorder.table(mod))
        executable = tvm.compile(mod, target=self.tvm_target, relax_pipeline=None)
        self.check_build(executable)
        return executable

    def check_build(self, executable: tvm.relax.Executable) -> None:
        """Raise if the build is not what this target promises (e.g. no device code). No-op here."""
