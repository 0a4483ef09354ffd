"""The interface between the kernel lowering pass and a target's kernel generators.

``LowerConvComposites`` asks a ``KernelLibrary`` for the kernels of each conv chain; each target
supplies its own (``cpu.CpuKernels``, ``gpu.GpuKernels``), so the pass never knows which device it
lowers for. A PENNI layer becomes a short pipeline of ``KernelStep``s whose shape depends on the
layer's ``KernelConfig`` (two kernels, one fused kernel, or the coefficient-first pair).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tvm import tirx

from ..plan.layers import ConvChain, PenniLayerPlan
from ..plan.quantize import Int8Handoff
from .config import DEFAULT_CONFIG, KernelConfig


@dataclass(frozen=True, eq=False)
class KernelStep:
    """One generated kernel in a layer's pipeline.

    The step is called as ``func(input, *constants, [bias], [residual], out)``: ``input`` is the
    layer input (reshaped to ``in_shape`` when given) for the first step and the previous step's
    output otherwise; only the last step takes the epilogue's bias and residual.
    """

    func: tirx.PrimFunc
    name: str
    constants: list[np.ndarray]
    out_shape: tuple[int, ...]
    in_shape: tuple[int, ...] | None = None
    takes_epilogue: bool = field(default=False)


class KernelLibrary(abc.ABC):
    """Kernel generators of one target.

    Argument order of the generated PrimFuncs:

    - ``basis_conv``: ``(X, *constants, M)`` where the constants are returned beside the kernel;
    - ``csr_recombine``: ``(M, indptr, indices, data, [bias], [residual], Y)``;
    - ``dense_conv``: ``(X, *constants, [bias], [residual], Y)``, the constants (the weights in the
      layout the kernel reads, index tables) returned beside the kernel.

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
    def dense_conv(self, chain: ConvChain) -> tuple[tirx.PrimFunc, list[np.ndarray]]:
        """A dense (groups = 1) conv with the chain's epilogue, and the constant arrays it reads after ``X``."""

    def linear(self, batch: int, weight: np.ndarray) -> tuple[tirx.PrimFunc, list[np.ndarray]] | None:
        """``Y (N, out) = X (N, K) · weight (K, out)`` as a kernel and the constants it reads after ``X``,
        or None to leave the matmul to the target's schedules (the default)."""
        return None

    def int8_conv(self, chain: ConvChain, plan: PenniLayerPlan | None = None) -> Any | None:
        """The int8 form of a conv layer (``plan`` given for a PENNI layer), opaque to the lowering, where
        this library runs the layer in int8; None (the default) where it runs it in float32."""
        return None

    def int8_conv_kernel(self, chain: ConvChain, int8_conv: Any,
                         handoff: Int8Handoff) -> tuple[tirx.PrimFunc, list[np.ndarray]]:
        """The kernel of an ``int8_conv`` result and the constants it reads after ``X``, reading and
        writing what ``handoff`` says: ``(X, *constants, [bias], [residual], [Y], [YQ])``."""
        raise NotImplementedError(f"{self.name} kernels have no int8 convs")

    def supports(self, config: KernelConfig) -> bool:
        """Whether ``penni_layer`` implements ``config`` (the default: basis-first CSR, two kernels)."""
        return config.order == "basis_first" and not config.fused and config.format == "csr"

    def penni_layer(self, plan: PenniLayerPlan, config: KernelConfig = DEFAULT_CONFIG) -> list[KernelStep]:
        """The kernel pipeline of one PENNI layer (with at least one nonzero coefficient)."""
        chain = plan.chain
        basis, constants = self.basis_conv(plan)
        csr = plan.coefs
        maps_shape = (chain.geometry.batch, plan.n_maps, chain.pixels)
        out_shape = (chain.geometry.batch, chain.out_channels, chain.pixels)
        return [
            KernelStep(basis, "penni_basis_conv", constants, maps_shape),
            KernelStep(self.csr_recombine(plan), "penni_csr_recombine",
                       [csr.indptr.astype(np.int32), csr.indices.astype(np.int32), csr.data.astype(np.float32)],
                       out_shape, takes_epilogue=True),
        ]
