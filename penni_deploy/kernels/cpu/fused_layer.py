"""A whole basis-first PENNI layer in one CPU kernel, tiled over output rows.

Each task takes one image and a tile of ``tile_rows`` output rows: it computes the used basis maps
of just that tile into a per-thread buffer (``n_maps × tile pixels``, small enough for L1/L2), then
recombines them with the CSR coefficients into the output tile with the epilogue. The full map
tensor ``M`` (d× the input's channels) is never materialized: less memory, and the maps are read
back while still in cache.
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
from .basis_rows import emit_channel_maps, emit_padded_copy, phases_shape, taps_shape
from .csr_recombine import emit_sparse_row


def fused_tile_rows(out_height: int, preferred: int) -> int:
    """Rows per tile: the largest divisor of the output height that is <= ``preferred`` (static tiles)."""
    for rows in range(min(preferred, out_height), 0, -1):
        if out_height % rows == 0:
            return rows
    return 1


def fused_penni_kernel(geom: ConvGeometry, n_maps: int, n_channels: int, out_channels: int, nnz: int,
                       epilogue: Epilogue, *, lanes: int = 16, block: int = 4, tile_rows: int = 4,
                       threads: int = 1) -> tirx.PrimFunc:
    """Generate the fused layer kernel.

    Returns
    -------
    tvm.tirx.PrimFunc
        ``f(X, channels, map_ptr, weights, indptr, indices, data, [bias], [residual], Y)``: the
        basis-conv constants of ``basis_conv_kernel`` then the CSR coefficients over the maps.
    """
    g = geom
    ho, wo = g.out_height, g.out_width
    rows = fused_tile_rows(ho, tile_rows)
    n_tiles = ho // rows
    tile_pixels = rows * wo
    sh, dh = g.stride[0], g.dilation[0]
    in_rows = (rows - 1) * sh + (g.kernel_h - 1) * dh + 1  # padded input rows one tile reads
    wp = g.window_width
    pixel_block = pick_block(tile_pixels, block * lanes)

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("penni_fused_layer")
            T.func_attr(KERNEL_ATTRS)
            X = T.arg("X", T.Buffer((g.batch, g.in_channels, g.height, g.width), F32))
            channels = T.arg("channels", T.Buffer((n_channels,), I32))
            map_ptr = T.arg("map_ptr", T.Buffer((n_channels + 1,), I32))
            weights = T.arg("weights", T.Buffer((n_maps, g.kernel_h, g.kernel_w), F32))
            indptr = T.arg("indptr", T.Buffer((out_channels + 1,), I32))
            indices = T.arg("indices", T.Buffer((nnz,), I32))
            data = T.arg("data", T.Buffer((nnz,), F32))
            bias, residual, Y = epilogue_args(epilogue, g.batch, out_channels, ho * wo)

            phases = phases_shape(g, in_rows)

            def scratch():
                return (T.alloc_buffer((n_maps, tile_pixels), F32), T.alloc_buffer((in_rows, wp), F32),
                        T.alloc_buffer(taps_shape(g, rows), F32),
                        T.alloc_buffer(phases, F32) if phases else None)

            def tile(task, maps, padded, taps, column_phases):
                n = task // n_tiles
                y0 = task % n_tiles * rows
                with T.serial(0, n_channels) as c:
                    i = channels[c]
                    emit_padded_copy(padded, lambda sy, sx, i=i: X[n, i, sy, sx], g, y0 * sh, in_rows,
                                     static_rows=False)
                    emit_channel_maps(padded, taps, weights, g, rows, map_ptr[c], map_ptr[c + 1], lanes,
                                      lambda m, p, value: T.buffer_store(maps, value, [m, p]), column_phases)

                with T.serial(0, out_channels) as o:

                    def one_block(p0, size, o=o):
                        def finish(v, total, p0=p0):
                            p = y0 * wo + p0 + v
                            T.buffer_store(Y, apply_epilogue(epilogue, total, bias, residual, n, o, p), [n, o, p])

                        emit_sparse_row(size, indptr[o], indptr[o + 1], lambda j: (data[j], indices[j]),
                                        lambda m, v, p0=p0: maps[m, p0 + v], finish, lanes=lanes)

                    static_blocks(tile_pixels, pixel_block, one_block)

            parallel_tasks(g.batch * n_tiles, threads, scratch, tile)
    return ib.get()
