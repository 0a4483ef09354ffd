"""Dense convolution on CPUs, for the layers that are not PENNI layers (a dense stem, 1×1 shortcuts).

TVM 0.27 ships no CPU schedule for conv2d, so this is a generated kernel: the input is gathered
into an im2col buffer (skipped for a stride-1, unpadded 1×1 conv, which needs none), then a
register-blocked GEMM keeps ``OB`` output channels × one pixel block in vector registers while the
reduction runs. The epilogue (bias, residual, ReLU) is fused into the store.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ...plan.epilogue import Epilogue
from ..epilogue import apply_epilogue
from ...plan.geometry import ConvGeometry
from ..signatures import epilogue_args
from ..tir_helpers import (
    F32,
    KERNEL_ATTRS,
    largest_divisor_at_most,
    padded_tap,
    pick_block,
)


def needs_im2col(geom: ConvGeometry) -> bool:
    """Whether the input must be gathered: anything but a stride-1, unpadded 1×1 conv."""
    return not (geom.kernel_h == geom.kernel_w == 1 and geom.stride == (1, 1) and not any(geom.padding))


def dense_conv_kernel(geom: ConvGeometry, out_channels: int, epilogue: Epilogue, *, lanes: int = 16,
                      channel_block: int = 8) -> tirx.PrimFunc:
    """Generate a dense NCHW conv2d (groups=1) with fused epilogue.

    Parameters
    ----------
    geom : ConvGeometry
        Input shape, kernel, stride, padding, dilation.
    out_channels : int
        Cout.
    epilogue : Epilogue
        Bias / residual / ReLU to fuse.
    lanes : int
        float32 lanes per vector register; pixels are blocked by ``2 * lanes``.
    channel_block : int
        Upper bound on output channels per register block (the largest divisor of Cout below it).

    Returns
    -------
    tvm.tirx.PrimFunc
        ``f(X, W, [bias], [residual], Y)`` with ``W (Cout, Cin*kh*kw)`` (the OIHW kernel, flattened).
    """
    g = geom
    ho, wo = g.out_height, g.out_width
    pixels = ho * wo
    depth = g.in_channels * g.kernel_h * g.kernel_w
    ob = largest_divisor_at_most(out_channels, channel_block)
    block = pick_block(pixels, 2 * lanes)

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("dense_conv")
            T.func_attr(KERNEL_ATTRS)
            X = T.arg("X", T.Buffer((g.batch, g.in_channels, g.height, g.width), F32))
            W = T.arg("W", T.Buffer((out_channels, depth), F32))
            bias, residual, Y = epilogue_args(epilogue, g.batch, out_channels, pixels)

            if needs_im2col(g):
                cols = T.alloc_buffer((g.batch, depth, pixels), F32)
                with T.parallel(0, g.batch * depth) as row:
                    n = row // depth
                    k = row % depth
                    ic = k // (g.kernel_h * g.kernel_w)
                    ky = k // g.kernel_w % g.kernel_h
                    kx = k % g.kernel_w
                    with T.serial(0, ho) as y:
                        with T.vectorized(0, wo) as x:
                            T.buffer_store(cols, padded_tap(X, g, n, ic, y, x, ky, kx), [n, k, y * wo + x])

                def source(n, k, p):
                    return cols[n, k, p]
            else:
                def source(n, k, p):
                    return X[n, k, p // wo, p % wo]

            n_pixel_blocks = -(-pixels // block)
            with T.parallel(0, g.batch * (out_channels // ob) * n_pixel_blocks) as task:
                n = task // ((out_channels // ob) * n_pixel_blocks)
                o0 = task // n_pixel_blocks % (out_channels // ob) * ob
                pb = task % n_pixel_blocks

                def gemm_block(p0, size):
                    acc = T.alloc_buffer((ob, size), F32, scope="local")
                    for oi in range(ob):
                        with T.vectorized(0, size) as v:
                            T.buffer_store(acc, T.float32(0), [oi, v])
                    with T.serial(0, depth) as k:
                        for oi in range(ob):
                            with T.vectorized(0, size) as v:
                                T.buffer_store(acc, acc[oi, v] + W[o0 + oi, k] * source(n, k, p0 + v), [oi, v])
                    for oi in range(ob):
                        with T.vectorized(0, size) as v:
                            T.buffer_store(Y, apply_epilogue(epilogue, acc[oi, v], bias, residual, n, o0 + oi, p0 + v),
                                           [n, o0 + oi, p0 + v])

                full, tail = divmod(pixels, block)
                if tail == 0:
                    gemm_block(pb * block, block)
                else:
                    # The last pixel block is shorter; branch once per task, not per element.
                    with T.If(pb < full):
                        with T.Then():
                            gemm_block(pb * block, block)
                        with T.Else():
                            gemm_block(full * block, tail)
    return ib.get()
