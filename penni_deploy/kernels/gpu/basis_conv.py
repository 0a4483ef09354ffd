"""Stage 1 of a PENNI layer on GPUs: one thread per output pixel of one (channel, basis) map.

Threads along x take consecutive output pixels of a map (coalesced stores, and neighbouring
input reads); the k×k taps are unrolled with zero padding by bounds checks. Only the maps some
coefficient uses are computed (``map_channels[m]`` names the input channel of map ``m``).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ...plan.geometry import ConvGeometry
from ..tir_helpers import F32, I32, KERNEL_ATTRS, padded_tap
from .launch import TileGrid, tile_indices


def basis_conv_gpu_kernel(geom: ConvGeometry, n_maps: int, *, on_gpu: bool = True,
                          max_threads: int = 256) -> tirx.PrimFunc:
    """Generate ``f(X, map_channels, weights, M)`` with ``M (N, n_maps, Ho*Wo)``.

    Parameters
    ----------
    geom : ConvGeometry
        The layer's input shape, kernel, stride, padding, dilation.
    n_maps : int
        Maps computed.
    on_gpu : bool
        Bind CUDA threads; False emits the same arithmetic as loops, for CPU checks.
    max_threads : int
        Threads per block.
    """
    g = geom
    ho, wo = g.out_height, g.out_width
    grid = TileGrid(g.batch, n_maps, ho * wo, max_threads)
    with IRBuilder() as ib, T.prim_func():
        T.func_name("penni_basis_conv")
        T.func_attr(KERNEL_ATTRS)
        X = T.arg("X", T.Buffer((g.batch, g.in_channels, g.height, g.width), F32))
        map_channels = T.arg("map_channels", T.Buffer((n_maps,), I32))
        weights = T.arg("weights", T.Buffer((n_maps, g.kernel_h, g.kernel_w), F32))
        M = T.arg("M", T.Buffer((g.batch, n_maps, ho * wo), F32))
        with tile_indices(grid, on_gpu) as (n, m, p):
            y, x = p // wo, p % wo
            i = map_channels[m]
            acc = None
            for ky in range(g.kernel_h):
                for kx in range(g.kernel_w):
                    value = padded_tap(X, g, n, i, y, x, ky, kx)
                    term = value * weights[m, ky, kx]
                    acc = term if acc is None else acc + term
            T.buffer_store(M, acc, [n, m, p])
    return ib.get()
