"""Stage 2 of a PENNI layer on CPUs: sparse recombination ``Y = epilogue(C_csr @ M)``.

``C`` is the layer's coefficient matrix (Cout × n_maps, CSR, known at compile time) and ``M`` the
basis maps from stage 1. Each task owns one output channel and a block of pixels; its block stays in
vector registers while the row's nonzeros stream the matching map rows through it, so each
coefficient costs one load and one FMA per vector. Empty rows produce just the epilogue.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ..epilogue import Epilogue, apply_epilogue
from ..signatures import csr_recombine_args
from ..tir_helpers import F32, KERNEL_ATTRS, pick_block, static_blocks


def csr_recombine_kernel(batch: int, n_maps: int, pixels: int, out_channels: int, nnz: int,
                         epilogue: Epilogue, *, lanes: int = 16) -> tirx.PrimFunc:
    """Generate the CSR recombination PrimFunc for one layer.

    Parameters
    ----------
    batch, n_maps, pixels, out_channels : int
        ``M`` is ``(batch, n_maps, pixels)``; ``Y`` is ``(batch, out_channels, pixels)``.
    nnz : int
        Nonzeros of the coefficient matrix (>= 1; an all-zero layer is not lowered to this kernel).
    epilogue : Epilogue
        Which of bias, residual and ReLU to fuse.
    lanes : int
        float32 lanes per vector register; pixels are processed in blocks of ``4 * lanes``.

    Returns
    -------
    tvm.tirx.PrimFunc
        ``f(M, indptr, indices, data, [bias], [residual], Y)``.
    """
    block = pick_block(pixels, 4 * lanes)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("penni_csr_recombine")
            T.func_attr(KERNEL_ATTRS)
            M, indptr, indices, data, bias, residual, Y = csr_recombine_args(
                batch, n_maps, pixels, out_channels, nnz, epilogue)

            with T.parallel(0, batch * out_channels) as task:
                n = task // out_channels
                o = task % out_channels

                def pixel_block(p0, size):
                    acc = T.alloc_buffer((size,), F32, scope="local")
                    with T.vectorized(0, size) as v:
                        T.buffer_store(acc, T.float32(0), [v])
                    with T.serial(indptr[o], indptr[o + 1]) as j:
                        with T.vectorized(0, size) as v:
                            T.buffer_store(acc, acc[v] + data[j] * M[n, indices[j], p0 + v], [v])
                    with T.vectorized(0, size) as v:
                        T.buffer_store(Y, apply_epilogue(epilogue, acc[v], bias, residual, n, o, p0 + v), [n, o, p0 + v])

                static_blocks(pixels, block, pixel_block)
    return ib.get()
