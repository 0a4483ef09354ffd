"""Stage 2 of the coefficient-first order on CPUs: ``Y[o] = epilogue(Σ_r U[o,r] ⋆ B[r])``.

In this order stage 1 mixes the input channels first (``U[o,r] = Σ_i C[o,i,r]·X[i]``, the CSR
recombination run on the input), and this kernel convolves each output's few ``U`` rows with their
basis kernel and sums them, carrying the layer's stride, padding and dilation. Rows no coefficient
produces are absent: each output reads its rows ``row_ptr[o]:row_ptr[o+1]``.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ...plan.epilogue import Epilogue
from ..epilogue import apply_epilogue
from ...plan.geometry import ConvGeometry
from ..signatures import epilogue_args
from ..tir_helpers import F32, I32, KERNEL_ATTRS, parallel_tasks, pick_block, static_blocks
from .basis_rows import emit_padded_copy


def basis_sum_conv_kernel(geom: ConvGeometry, n_rows: int, out_channels: int, epilogue: Epilogue, *,
                          lanes: int = 16, threads: int = 1) -> tirx.PrimFunc:
    """Generate the basis-sum convolution.

    Returns
    -------
    tvm.tirx.PrimFunc
        ``f(U, row_ptr, row_weights, [bias], [residual], Y)`` with ``U (N, n_rows, H*W)``,
        ``row_ptr (Cout+1,) int32``, ``row_weights (n_rows, kh, kw)`` and ``Y (N, Cout, Ho*Wo)``.
    """
    g = geom
    ho, wo = g.out_height, g.out_width
    hp, wp = g.window_height, g.window_width

    (sh, sw), (dh, dw) = g.stride, g.dilation
    x_block = pick_block(wo, 2 * lanes)

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("penni_basis_sum_conv")
            T.func_attr(KERNEL_ATTRS)
            U = T.arg("U", T.Buffer((g.batch, max(n_rows, 1), g.height * g.width), F32))
            row_ptr = T.arg("row_ptr", T.Buffer((out_channels + 1,), I32))
            weights = T.arg("row_weights", T.Buffer((max(n_rows, 1), g.kernel_h, g.kernel_w), F32))
            bias, residual, Y = epilogue_args(epilogue, g.batch, out_channels, ho * wo)

            def scratch():
                return T.alloc_buffer((ho * wo,), F32), T.alloc_buffer((hp, wp), F32)

            def output(task, acc, padded):
                n = task // out_channels
                o = task % out_channels
                with T.serial(0, ho * wo) as p:
                    T.buffer_store(acc, T.float32(0), [p])
                with T.serial(row_ptr[o], row_ptr[o + 1]) as row:
                    emit_padded_copy(padded, lambda sy, sx, row=row: U[n, row, sy * g.width + sx], g, 0, hp,
                                     static_rows=True)
                    with T.serial(0, ho) as y:

                        def row_block(x0, size, row=row, y=y):
                            with T.vectorized(0, size) as v:
                                x = x0 + v
                                total = acc[y * wo + x]
                                for ky in range(g.kernel_h):
                                    for kx in range(g.kernel_w):
                                        total = total + padded[y * sh + ky * dh, x * sw + kx * dw] * weights[row, ky, kx]
                                T.buffer_store(acc, total, [y * wo + x])

                        static_blocks(wo, x_block, row_block)
                with T.serial(0, ho) as y:

                    def out_block(x0, size, y=y):
                        with T.vectorized(0, size) as v:
                            p = y * wo + x0 + v
                            T.buffer_store(Y, apply_epilogue(epilogue, acc[p], bias, residual, n, o, p), [n, o, p])

                    static_blocks(wo, x_block, out_block)

            parallel_tasks(g.batch * out_channels, threads, scratch, output)
    return ib.get()
