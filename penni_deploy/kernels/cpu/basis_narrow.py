"""The basis convolution of a narrow image (the 8×8, 4×4 and 2×2 layers of a CIFAR network).

With only a few vectors of output pixels per channel, the generic kernel's per-channel set-up (a
zero-padded 2-D copy, then the taps laid out row by row in 4- or 8-wide pieces) costs several
times its FMAs. Here, for stride 1 and an output as wide as the input, each tap of the flattened
channel is the flattened channel itself shifted by a constant, ``p + (ky·dh - top)·W + kx·dw - left``:
the channel is copied once, flat, into a buffer with a border, and each tap is one unaligned
vector load with a constant lane mask (the pixels whose source falls outside the image). Tasks
take a run of channels each, so the scratch and its border are set up once per task.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ...plan.geometry import ConvGeometry
from ..tir_helpers import F32, I32, KERNEL_ATTRS, parallel_tasks
from .basis_rows import emit_maps_from_taps

#: Output pixels, in vectors, up to which an image counts as narrow.
NARROW_VECTORS = 4


def is_narrow(geom: ConvGeometry, lanes: int) -> bool:
    """Whether ``basis_narrow_kernel`` applies: stride 1, output as wide as the input (so a tap is
    a constant shift of the flattened channel), and at most ``NARROW_VECTORS`` vectors of pixels."""
    g = geom
    return (g.stride == (1, 1) and g.out_width == g.width
            and g.out_height * g.out_width <= NARROW_VECTORS * lanes)


def _tap_shifts(g: ConvGeometry) -> list[int]:
    top, left = g.padding[0], g.padding[1]
    dh, dw = g.dilation
    return [(ky * dh - top) * g.width + kx * dw - left for ky in range(g.kernel_h) for kx in range(g.kernel_w)]


def basis_narrow_kernel(geom: ConvGeometry, n_maps: int, n_channels: int, *, lanes: int = 16,
                        threads: int = 1) -> tirx.PrimFunc:
    """The basis convolution for a narrow image: same signature and result as ``basis_conv_kernel``,
    ``f(X, channels, map_ptr, weights, M)``. Requires ``is_narrow(geom, lanes)``."""
    g = geom
    if not is_narrow(g, lanes):
        raise ValueError(f"not a narrow image for this kernel: {g}")
    ho, wo = g.out_height, g.out_width
    plane, pixels = g.height * g.width, ho * wo
    shifts = _tap_shifts(g)
    front = max(0, -min(shifts))  # border before the channel, so every shifted load stays in the buffer
    length = front + max(plane, pixels + max(shifts))
    tasks_per_image = min(n_channels, max(8, 4 * threads))
    per_task = -(-n_channels // tasks_per_image)
    top, left = g.padding[0], g.padding[1]
    dh, dw = g.dilation

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("penni_basis_narrow")
            T.func_attr(KERNEL_ATTRS)
            X = T.arg("X", T.Buffer((g.batch, g.in_channels, g.height, g.width), F32))
            channels = T.arg("channels", T.Buffer((n_channels,), I32))
            map_ptr = T.arg("map_ptr", T.Buffer((n_channels + 1,), I32))
            weights = T.arg("weights", T.Buffer((n_maps, g.kernel_h, g.kernel_w), F32))
            M = T.arg("M", T.Buffer((g.batch, n_maps, pixels), F32))
            flat_x = T.decl_buffer((g.batch, g.in_channels * plane), F32, data=X.data)

            def scratch():
                return (T.alloc_buffer((length,), F32),)

            def run(task, flat):
                n = task // tasks_per_image
                first = task % tasks_per_image * per_task
                # the border is never selected (the masks cover it) but is zeroed so that no lane
                # ever reads undefined memory
                with T.vectorized(0, length) as q:
                    T.buffer_store(flat, T.float32(0), [q])
                # a zero-based loop: one starting at `first` miscompiled in TVM 0.27 (the inner
                # loop's map indices came out relative to its own start)
                with T.serial(0, T.min(per_task, n_channels - first)) as k:
                    c = first + k
                    i = channels[c]
                    with T.vectorized(0, plane) as q:
                        T.buffer_store(flat, flat_x[n, i * plane + q], [front + q])
                    for p0 in range(0, pixels, lanes):
                        size = min(lanes, pixels - p0)
                        held = T.alloc_buffer((len(shifts), size), F32, scope="local")
                        for t, shift in enumerate(shifts):
                            ky, kx = divmod(t, g.kernel_w)
                            with T.vectorized(0, size) as v:
                                y, x = (p0 + v) // wo, (p0 + v) % wo
                                sy, sx = y + ky * dh - top, x + kx * dw - left
                                inside = tirx.all(sy >= 0, sy < g.height, sx >= 0, sx < g.width)
                                T.buffer_store(held, T.Select(inside, flat[front + p0 + v + shift], T.float32(0)),
                                               [t, v])
                        emit_maps_from_taps(held, weights, g, map_ptr[c], map_ptr[c + 1], size, p0,
                                            lambda m, p, value, n=n: T.buffer_store(M, value, [n, m, p]))

            parallel_tasks(g.batch * tasks_per_image, threads, scratch, run)
    return ib.get()
