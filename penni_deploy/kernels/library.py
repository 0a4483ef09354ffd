"""The interface between the kernel lowering pass and a target's kernel generators.

``LowerConvComposites`` asks a ``KernelLibrary`` for the three kernels a conv chain can need; each
target supplies its own (``cpu.CpuKernels``, ``gpu.GpuKernels``) with the same argument order, so
the pass never knows which device it lowers for.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import numpy as np
from tvm import tirx

if TYPE_CHECKING:  # the planning types live with the pass that makes them
    from ..passes.conv_chain import ConvChain, PenniLayerPlan


class KernelLibrary(abc.ABC):
    """Kernel generators of one target.

    Argument order of the generated PrimFuncs:

    - ``basis_conv``: ``(X, *constants, M)`` where the constants are returned beside the kernel;
    - ``csr_recombine``: ``(M, indptr, indices, data, [bias], [residual], Y)``;
    - ``dense_conv``: ``(X, W (Cout, Cin·kh·kw), [bias], [residual], Y)``.

    ``M`` is ``(N, n_maps, Ho·Wo)``, ``Y`` and the residual ``(N, Cout, Ho·Wo)``.
    """

    #: Short name for reports.
    name: str

    @abc.abstractmethod
    def basis_conv(self, plan: PenniLayerPlan) -> tuple[tirx.PrimFunc, list[np.ndarray]]:
        """Stage 1 kernel of a PENNI layer and the constant arrays it reads after ``X``."""

    @abc.abstractmethod
    def csr_recombine(self, plan: PenniLayerPlan) -> tirx.PrimFunc:
        """Stage 2 kernel of a PENNI layer, with the chain's epilogue."""

    @abc.abstractmethod
    def dense_conv(self, chain: ConvChain) -> tirx.PrimFunc:
        """A dense (groups = 1) conv with the chain's epilogue."""
