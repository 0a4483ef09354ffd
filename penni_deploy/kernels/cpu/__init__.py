"""CPU kernel generators: threads over (image, channel) tasks, vectorized inner loops."""

from __future__ import annotations

from ..library import KernelLibrary
from .basis_conv import basis_conv_kernel
from .csr_recombine import csr_recombine_kernel
from .dense_conv import dense_conv_kernel, needs_im2col


class CpuKernels(KernelLibrary):
    """The CPU kernels, for a vector register of ``lanes`` float32 values."""

    name = "cpu"

    def __init__(self, lanes: int):
        self.lanes = lanes

    def basis_conv(self, plan):
        g = plan.chain.geometry
        kernel = basis_conv_kernel(g, plan.n_maps, len(plan.channels), lanes=self.lanes)
        return kernel, [plan.channels, plan.map_ptr, plan.map_weights]

    def csr_recombine(self, plan):
        chain = plan.chain
        return csr_recombine_kernel(chain.geometry.batch, plan.n_maps, chain.pixels, chain.out_channels,
                                    plan.coefs.nnz, chain.epilogue, lanes=self.lanes)

    def dense_conv(self, chain):
        return dense_conv_kernel(chain.geometry, chain.out_channels, chain.epilogue, lanes=self.lanes)


__all__ = ["CpuKernels", "basis_conv_kernel", "csr_recombine_kernel", "dense_conv_kernel", "needs_im2col"]
