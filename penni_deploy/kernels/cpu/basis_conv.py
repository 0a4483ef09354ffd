"""Stage 1 of a PENNI layer on CPUs: the basis convolution ``M[m] = X[channel(m)] ⋆ Wm[m]``.

Each map ``m`` is one (input channel i, basis r) pair that some output actually uses; maps no
coefficient reads are never computed. Maps are grouped by input channel so each channel is padded
once into a small per-thread buffer and then convolved with each of its bases, with the output
width vectorized. Stride, padding and dilation are the layer's own.

Layout: ``X (N, Cin, H, W)`` → ``M (N, n_maps, Ho*Wo)``, flattened spatially because stage 2 (the
CSR recombination) streams whole map rows.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ..geometry import ConvGeometry
from ..tir_helpers import F32, I32, KERNEL_ATTRS, pick_block, static_blocks


def basis_conv_kernel(geom: ConvGeometry, n_maps: int, n_channels: int, *, lanes: int = 16) -> tirx.PrimFunc:
    """Generate the basis-convolution PrimFunc for one layer.

    Parameters
    ----------
    geom : ConvGeometry
        The layer's input shape, kernel size, stride, padding and dilation.
    n_maps : int
        Number of (channel, basis) maps computed (columns of the recombination).
    n_channels : int
        Number of distinct input channels those maps read.
    lanes : int
        float32 lanes of one vector register (16 for AVX-512, 8 for AVX2); the output width is
        processed in blocks of ``2 * lanes``.

    Returns
    -------
    tvm.tirx.PrimFunc
        ``f(X, channels, map_ptr, weights, M)`` with ``channels (n_channels,) int32``,
        ``map_ptr (n_channels+1,) int32``, ``weights (n_maps, kh, kw)`` and
        ``M (N, n_maps, Ho*Wo)``.
    """
    g = geom
    ho, wo = g.out_height, g.out_width
    hp, wp = g.window_height, g.window_width
    top, left = g.padding[0], g.padding[1]
    (sh, sw), (dh, dw) = g.stride, g.dilation
    x_block = pick_block(wo, 2 * lanes)

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("penni_basis_conv")
            T.func_attr(KERNEL_ATTRS)
            X = T.arg("X", T.Buffer((g.batch, g.in_channels, g.height, g.width), F32))
            channels = T.arg("channels", T.Buffer((n_channels,), I32))
            map_ptr = T.arg("map_ptr", T.Buffer((n_channels + 1,), I32))
            weights = T.arg("weights", T.Buffer((n_maps, g.kernel_h, g.kernel_w), F32))
            M = T.arg("M", T.Buffer((g.batch, n_maps, ho * wo), F32))

            with T.parallel(0, g.batch * n_channels) as task:
                n = task // n_channels
                c = task % n_channels
                i = channels[c]
                # Zero-padded copy of just the input window this layer reads.
                padded = T.alloc_buffer((hp, wp), F32)
                with T.serial(0, hp) as yy:
                    with T.vectorized(0, wp) as xx:
                        sy, sx = yy - top, xx - left
                        inside = tirx.all(sy >= 0, sy < g.height, sx >= 0, sx < g.width)
                        T.buffer_store(padded, tirx.if_then_else(inside, X[n, i, sy, sx], T.float32(0)), [yy, xx])
                with T.serial(map_ptr[c], map_ptr[c + 1]) as m:
                    with T.serial(0, ho) as y:

                        def row_block(x0, size, m=m, y=y):
                            with T.vectorized(0, size) as v:
                                x = x0 + v
                                acc = None
                                for ky in range(g.kernel_h):
                                    for kx in range(g.kernel_w):
                                        term = padded[y * sh + ky * dh, x * sw + kx * dw] * weights[m, ky, kx]
                                        acc = term if acc is None else acc + term
                                T.buffer_store(M, acc, [n, m, y * wo + x])

                        static_blocks(wo, x_block, row_block)
    return ib.get()
