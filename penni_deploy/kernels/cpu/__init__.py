"""CPU kernel generators: threads over (image, channel) tasks, vectorized inner loops; the int8 conv
(``int8.py``) and the bf16 GEMM tile call C micro-kernels (``native/``)."""

from __future__ import annotations

import numpy as np

from ..config import DEFAULT_CONFIG, KernelConfig
from ...plan.epilogue import Epilogue
from ...plan.quantize import InputQuantization, dense_weights_of_penni
from ..library import KernelLibrary, KernelStep
from .basis_conv import basis_conv_kernel
from .basis_narrow import basis_narrow_kernel, is_narrow
from .basis_sum_conv import basis_sum_conv_kernel
from .csr_recombine import (
    balanced_row_order,
    csr_recombine_kernel,
    ell_arrays,
    ell_recombine_kernel,
    unrolled_recombine_kernel,
)
from .gemm import (
    conv_source,
    default_tile,
    gemm_conv_kernel,
    linear_kernel,
    needs_base_table,
    pack_weights,
    pick_orientation,
)
from . import bf16, int8
from .fused_layer import fused_penni_kernel

#: Beyond this many nonzeros a pattern-specialized kernel takes too long to compile for its gain.
MAX_UNROLLED_NNZ = 6_000


class CpuKernels(KernelLibrary):
    """The CPU kernels, for a vector register of ``lanes`` float32 values.

    ``precision``: ``fp32``; ``bf16`` for the dense layers (PENNI layers stay float32); or ``int8``:
    every conv with a calibrated input range (``ConvChain.input_range``) on the int8 conv
    (``int8.py``, through ``int8_conv``: ``LowerConvComposites`` asks it first), a PENNI layer only
    where that is estimated cheaper than its float32 kernels; Linear stays float32.
    """

    name = "cpu"

    def __init__(self, lanes: int, threads: int = 1, precision: str = "fp32", int8_layers: str = "auto"):
        self.lanes = lanes
        self.threads = threads
        self.precision = precision
        self.int8_layers = int8_layers  # "all": every PENNI layer with a range in int8, not just the cheaper
        # what the GEMM kernels (dense convs without a range, Linear) run at
        self.gemm_precision = "fp32" if precision == "int8" else precision

    def basis_conv(self, plan):
        return self._basis_kernel(plan), [plan.channels, plan.map_ptr, plan.map_weights]

    def _basis_kernel(self, plan):
        """Stage 1 alone: the narrow-image kernel where it applies (tiny CIFAR stages), else the generic one."""
        g = plan.chain.geometry
        generate = basis_narrow_kernel if is_narrow(g, self.lanes) else basis_conv_kernel
        return generate(g, plan.n_maps, len(plan.channels), lanes=self.lanes, threads=self.threads)

    def csr_recombine(self, plan):
        chain = plan.chain
        return csr_recombine_kernel(chain.geometry.batch, plan.n_maps, chain.pixels, chain.out_channels,
                                    plan.coefs.nnz, chain.epilogue, lanes=self.lanes)

    def dense_conv(self, chain):
        g, cout = chain.geometry, chain.out_channels
        orientation = pick_orientation(chain.pixels, cout, self.lanes)
        precision = chain.precision or self.gemm_precision  # a layer kept in fp32 (--fp32-layers)
        kernel = gemm_conv_kernel(g, cout, chain.epilogue, lanes=self.lanes, threads=self.threads,
                                  orientation=orientation, precision=precision)
        constants = [self._packed(pack_weights(chain.weight.reshape(cout, -1).astype(np.float32), orientation,
                                               default_tile(self.lanes)), precision)]
        if needs_base_table(g):
            constants.append(conv_source(g)[2])
        return kernel, constants

    def linear(self, batch, weight):
        depth, out_features = weight.shape
        tile = default_tile(self.lanes)
        kernel = linear_kernel(batch, depth, out_features, lanes=self.lanes, threads=self.threads, tile=tile,
                               precision=self.gemm_precision)
        # weight is (K, out): pack its transpose, (out, K), like a conv's.
        return kernel, [self._packed(pack_weights(np.ascontiguousarray(weight.T, dtype=np.float32), "channels", tile))]

    def _packed(self, weights: np.ndarray, precision: str | None = None) -> np.ndarray:
        """Packed float32 weights in ``precision`` (default: this library's GEMM precision)."""
        return bf16.pack_weight_pairs(weights) if (precision or self.gemm_precision) == "bf16" else weights

    def _int8_packed(self, chain, weight) -> int8.PackedInt8Conv:
        quant = InputQuantization.from_range(chain.input_range)
        return int8.pack_int8_conv(np.asarray(weight, np.float32), chain.geometry, quant,
                                   int8.tile_rows_for(chain.geometry, self.threads))

    def int8_conv(self, chain, plan=None):
        return self.int8_penni(plan) if plan is not None else self.int8_dense(chain)

    def int8_conv_kernel(self, chain, int8_conv, handoff):
        kernel = int8.int8_conv_kernel(chain.geometry, int8_conv, chain.epilogue, self.threads, handoff)
        return kernel, int8_conv.constants

    def int8_penni(self, plan) -> int8.PackedInt8Conv | None:
        """The int8 conv of a PENNI layer, when this build is int8, the layer has a calibrated input
        range and the int8 conv is estimated cheaper than the float32 PENNI kernels (or
        ``int8_layers`` is ``all``); else None."""
        chain = plan.chain
        if self.precision != "int8" or chain.input_range is None:
            return None
        g = chain.geometry
        fp32 = int8.fp32_penni_cost(plan.n_maps, g.kernel_h * g.kernel_w, plan.coefs.nnz, chain.pixels, self.lanes)
        packed = self._int8_packed(chain, dense_weights_of_penni(chain.weight, chain.basis_weight, g.in_channels))
        return packed if self.int8_layers == "all" or int8.int8_cost(g, packed) < fp32 else None

    def int8_dense(self, chain) -> int8.PackedInt8Conv | None:
        """The int8 conv of a dense conv, as ``int8_penni`` decides (against the float32 GEMM)."""
        if self.precision != "int8" or chain.input_range is None:
            return None
        packed = self._int8_packed(chain, chain.weight)
        fp32 = int8.fp32_dense_cost(chain.geometry, chain.out_channels, self.lanes)
        return packed if self.int8_layers == "all" or int8.int8_cost(chain.geometry, packed) < fp32 else None

    def supports(self, config: KernelConfig) -> bool:
        return True

    def penni_layer(self, plan, config: KernelConfig = DEFAULT_CONFIG) -> list[KernelStep]:
        chain = plan.chain
        g = chain.geometry
        out_shape = (g.batch, chain.out_channels, chain.pixels)
        if config.order == "coef_first":
            coef_first = plan.coef_first()
            if coef_first is None:
                raise ValueError("coef_first needs basis kernels shared by all input channels")
            mixed_shape = (g.batch, coef_first.n_rows, g.height * g.width)
            mix = self._recombine(coef_first.mix, g.batch, g.in_channels, g.height * g.width, Epilogue(), config,
                                  "penni_coef_mix", mixed_shape, takes_epilogue=False)
            mix = KernelStep(mix.func, mix.name, mix.constants, mix.out_shape,
                             in_shape=(g.batch, g.in_channels, g.height * g.width))
            conv = basis_sum_conv_kernel(g, coef_first.n_rows, chain.out_channels, chain.epilogue, lanes=self.lanes,
                                         threads=self.threads)
            return [mix, KernelStep(conv, "penni_basis_sum_conv", [coef_first.row_ptr, coef_first.row_weights],
                                    out_shape, takes_epilogue=True)]
        csr = plan.coefs
        csr_arrays = [csr.indptr.astype(np.int32), csr.indices.astype(np.int32), csr.data.astype(np.float32)]
        basis_constants = [plan.channels, plan.map_ptr, plan.map_weights]
        if config.fused:
            kernel = fused_penni_kernel(g, plan.n_maps, len(plan.channels), chain.out_channels, csr.nnz,
                                        chain.epilogue, lanes=self.lanes, block=config.block,
                                        tile_rows=config.tile_rows, threads=self.threads)
            return [KernelStep(kernel, "penni_fused_layer", basis_constants + csr_arrays, out_shape,
                               takes_epilogue=True)]
        basis = self._basis_kernel(plan)
        maps_shape = (g.batch, plan.n_maps, chain.pixels)
        return [KernelStep(basis, "penni_basis_conv", basis_constants, maps_shape),
                self._recombine(csr, g.batch, plan.n_maps, chain.pixels, chain.epilogue, config,
                                f"penni_{config.format}_recombine", out_shape, takes_epilogue=True)]

    def _recombine(self, csr, batch, n_inputs, pixels, epilogue, config, name, out_shape, *, takes_epilogue):
        """``out = epilogue(csr @ input)`` in the config's format."""
        rows = csr.shape[0]
        fmt = config.format
        if fmt == "unrolled" and csr.nnz > MAX_UNROLLED_NNZ:
            fmt = "csr"
        if fmt == "unrolled":
            kernel = unrolled_recombine_kernel(batch, n_inputs, pixels, csr, epilogue, lanes=self.lanes,
                                               block=config.block, row_chunks=self.threads)
            return KernelStep(kernel, name, [csr.data.astype(np.float32)], out_shape, takes_epilogue=takes_epilogue)
        if fmt == "ell":
            indices, data, width = ell_arrays(csr)
            kernel = ell_recombine_kernel(batch, n_inputs, pixels, rows, width, epilogue, lanes=self.lanes,
                                          block=config.block)
            return KernelStep(kernel, name, [indices, data], out_shape, takes_epilogue=takes_epilogue)
        # indices as element offsets into an image's input (see csr_recombine_kernel's `offsets`)
        offsets = n_inputs * pixels < 2**31
        indices = csr.indices.astype(np.int64) * (pixels if offsets else 1)
        arrays = [csr.indptr.astype(np.int32), indices.astype(np.int32), csr.data.astype(np.float32)]
        if config.balance:
            arrays.append(balanced_row_order(csr.indptr))
        kernel = csr_recombine_kernel(batch, n_inputs, pixels, rows, max(csr.nnz, 1), epilogue, lanes=self.lanes,
                                      block=config.block, balanced=config.balance, offsets=offsets)
        return KernelStep(kernel, name, arrays, out_shape, takes_epilogue=takes_epilogue)


__all__ = [
    "MAX_UNROLLED_NNZ",
    "CpuKernels",
    "basis_conv_kernel",
    "basis_narrow_kernel",
    "csr_recombine_kernel",
    "gemm_conv_kernel",
]
