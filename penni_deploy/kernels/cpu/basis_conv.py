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

from ...plan.geometry import ConvGeometry
from ..tir_helpers import F32, I32, KERNEL_ATTRS, parallel_tasks
from .basis_rows import emit_channel_maps, emit_padded_copy, phases_shape, taps_shape


def basis_conv_kernel(geom: ConvGeometry, n_maps: int, n_channels: int, *, lanes: int = 16,
                      threads: int = 1) -> tirx.PrimFunc:
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
    threads : int
        Worker threads the channels are split over.

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


    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("penni_basis_conv")
            T.func_attr(KERNEL_ATTRS)
            X = T.arg("X", T.Buffer((g.batch, g.in_channels, g.height, g.width), F32))
            channels = T.arg("channels", T.Buffer((n_channels,), I32))
            map_ptr = T.arg("map_ptr", T.Buffer((n_channels + 1,), I32))
            weights = T.arg("weights", T.Buffer((n_maps, g.kernel_h, g.kernel_w), F32))
            M = T.arg("M", T.Buffer((g.batch, n_maps, ho * wo), F32))

            phases = phases_shape(g, hp)

            def scratch():
                # zero-padded copy of just the input window this layer reads (border zeroed once
                # per thread), its taps, and with a column stride its column phases
                buffers = (T.alloc_buffer((hp, wp), F32), T.alloc_buffer(taps_shape(g, ho), F32))
                return buffers + ((T.alloc_buffer(phases, F32),) if phases else (None,))

            def channel(task, padded, taps, column_phases):
                n = task // n_channels
                c = task % n_channels
                i = channels[c]
                emit_padded_copy(padded, lambda sy, sx: X[n, i, sy, sx], g, 0, hp, static_rows=True)
                emit_channel_maps(padded, taps, weights, g, ho, map_ptr[c], map_ptr[c + 1], lanes,
                                  lambda m, p, value: T.buffer_store(M, value, [n, m, p]), column_phases)

            parallel_tasks(g.batch * n_channels, threads, scratch, channel)
    return ib.get()
