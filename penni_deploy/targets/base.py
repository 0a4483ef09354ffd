"""The interface every target implements.

A target turns a graph-rewritten Relax module (PENNI layers already grouped into composite
functions) into a TVM ``Executable``: it supplies the kernel generators for those composites, the
schedules for everything else and the TVM target itself. The driver (``penni_deploy.compiler``)
only calls these methods.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import tvm


@dataclass(frozen=True)
class KernelParams:
    """Tiling knobs the kernel generators take; one set per target."""

    lanes: int  # float32 lanes of a vector register


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
    def kernel_params(self) -> KernelParams:
        """Knobs for the PENNI and dense-conv kernel generators."""

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """The TVM runtime device kind the artifact runs on (``cpu``, ``cuda``)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able facts recorded in the artifact manifest (kind, cpu, triple, ...)."""

    @abc.abstractmethod
    def lowering_passes(self) -> list[tvm.transform.Pass]:
        """Passes from the rewritten graph to a module ready for ``tvm.compile``: kernel lowering,
        legalization, schedules, VM lowering."""

    def build(self, mod: tvm.IRModule) -> tvm.relax.Executable:
        """Lower ``mod`` with this target's passes and build it."""
        with self.tvm_target:
            mod = tvm.transform.Sequential(self.lowering_passes(), name=f"{self.name}_lowering")(mod)
        return tvm.compile(mod, target=self.tvm_target, relax_pipeline=None)
