"""Dense convolution on GPUs (non-PENNI layers): one thread per output pixel and channel.

Threads along x take consecutive pixels of one output channel; the reduction over input channels
and taps runs in a register, with zero padding by bounds checks and the epilogue fused. Simple by
design: on the networks penni-deploy targets these are 1×1 shortcuts and small stems.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ...plan.epilogue import Epilogue
from ..epilogue import apply_epilogue
from ...plan.geometry import ConvGeometry
from ..signatures import epilogue_args
from ..tir_helpers import F32, KERNEL_ATTRS, padded_tap
from .launch import TileGrid, tile_indices


def dense_conv_gpu_kernel(geom: ConvGeometry, out_channels: int, epilogue: Epilogue, *, on_gpu: bool = True,
                          max_threads: int = 256) -> tirx.PrimFunc:
    """Generate ``f(X, W, [bias], [residual], Y)`` with ``W (Cout, Cin*kh*kw)``."""
    g = geom
    ho, wo = g.out_height, g.out_width
    taps = g.kernel_h * g.kernel_w
    grid = TileGrid(g.batch, out_channels, ho * wo, max_threads)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("dense_conv")
            T.func_attr(KERNEL_ATTRS)
            X = T.arg("X", T.Buffer((g.batch, g.in_channels, g.height, g.width), F32))
            W = T.arg("W", T.Buffer((out_channels, g.in_channels * taps), F32))
            bias, residual, Y = epilogue_args(epilogue, g.batch, out_channels, ho * wo)
            with tile_indices(grid, on_gpu) as (n, o, p):
                y, x = p // wo, p % wo
                acc = T.alloc_buffer((1,), F32, scope="local")
                T.buffer_store(acc, T.float32(0), [0])
                with T.serial(0, g.in_channels) as ic:
                    for ky in range(g.kernel_h):
                        for kx in range(g.kernel_w):
                            value = padded_tap(X, g, n, ic, y, x, ky, kx)
                            T.buffer_store(acc, acc[0] + value * W[o, ic * taps + ky * g.kernel_w + kx], [0])
                T.buffer_store(Y, apply_epilogue(epilogue, acc[0], bias, residual, n, o, p), [n, o, p])
    return ib.get()
