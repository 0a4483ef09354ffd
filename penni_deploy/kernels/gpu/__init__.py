"""GPU kernel generators (CUDA threads), checkable on a CPU with ``on_gpu=False``."""

from __future__ import annotations

import numpy as np

from ..library import KernelLibrary
from .basis_conv import basis_conv_gpu_kernel
from .csr_recombine import csr_recombine_gpu_kernel
from .dense_conv import dense_conv_gpu_kernel
from .launch import TileGrid


class GpuKernels(KernelLibrary):
    """The GPU kernels; ``on_gpu=False`` gives the same arithmetic as CPU loops (for tests)."""

    name = "gpu"

    def __init__(self, on_gpu: bool = True, max_threads: int = 256):
        self.on_gpu = on_gpu
        self.max_threads = max_threads

    def basis_conv(self, plan):
        kernel = basis_conv_gpu_kernel(plan.chain.geometry, plan.n_maps, on_gpu=self.on_gpu,
                                       max_threads=self.max_threads)
        return kernel, [plan.map_channels, plan.map_weights]

    def csr_recombine(self, plan):
        chain = plan.chain
        return csr_recombine_gpu_kernel(chain.geometry.batch, plan.n_maps, chain.pixels, chain.out_channels,
                                        plan.coefs.nnz, chain.epilogue, on_gpu=self.on_gpu,
                                        max_threads=self.max_threads)

    def dense_conv(self, chain):
        kernel = dense_conv_gpu_kernel(chain.geometry, chain.out_channels, chain.epilogue, on_gpu=self.on_gpu,
                                       max_threads=self.max_threads)
        return kernel, [np.ascontiguousarray(chain.weight.reshape(chain.out_channels, -1), dtype=np.float32)]


__all__ = ["GpuKernels", "TileGrid", "basis_conv_gpu_kernel", "csr_recombine_gpu_kernel", "dense_conv_gpu_kernel"]
