"""Stage 2 of a PENNI layer on GPUs: CSR rows over blocks and warps, pixels over threads.

A block holds ``rows_per_block`` output channels (``threadIdx.y``) × a run of pixels
(``threadIdx.x``). All threads of a row walk the same nonzeros, so ``indptr``/``indices``/``data``
reads are broadcasts, and each nonzero streams one map row with coalesced loads. Bias, residual and
ReLU are applied before the single store.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ...plan.epilogue import Epilogue
from ..epilogue import apply_epilogue
from ..signatures import csr_recombine_args
from ..tir_helpers import F32, KERNEL_ATTRS
from .launch import TileGrid, tile_indices


def csr_recombine_gpu_kernel(batch: int, n_maps: int, pixels: int, out_channels: int, nnz: int,
                             epilogue: Epilogue, *, on_gpu: bool = True, max_threads: int = 256) -> tirx.PrimFunc:
    """Generate ``f(M, indptr, indices, data, [bias], [residual], Y)``; see the CPU kernel for shapes."""
    grid = TileGrid(batch, out_channels, pixels, max_threads)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("penni_csr_recombine")
            T.func_attr(KERNEL_ATTRS)
            M, indptr, indices, data, bias, residual, Y = csr_recombine_args(
                batch, n_maps, pixels, out_channels, nnz, epilogue)
            with tile_indices(grid, on_gpu) as (n, o, p):
                acc = T.alloc_buffer((1,), F32, scope="local")
                T.buffer_store(acc, T.float32(0), [0])
                with T.serial(indptr[o], indptr[o + 1]) as j:
                    T.buffer_store(acc, acc[0] + data[j] * M[n, indices[j], p], [0])
                T.buffer_store(Y, apply_epilogue(epilogue, acc[0], bias, residual, n, o, p), [n, o, p])
    return ib.get()
