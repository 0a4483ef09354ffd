"""The basis convolution of a narrow image (the 8×8, 4×4 and 2×2 layers of a CIFAR network, the
7×7 stage of an ImageNet one).

With only a few vectors of output pixels per channel, the generic kernel's per-channel set-up (a
zero-padded 2-D copy, then the taps laid out row by row in 4- or 8-wide pieces) costs several
times its FMAs. Here each channel is first split into its stride phases: plane ``(a, b)`` holds
``X[s·y + a, s·x + b]`` in rows ``Wo`` wide (flattened). Tap ``(ky, kx)`` reads input
``(s·y + ky·dh - top, s·x + kx·dw - left)``; writing ``ky·dh - top = s·qy + a`` (floor division)
makes it plane ``(a, b)`` at output position ``(y + qy, x + qx)``: the flattened plane shifted by
the constant ``qy·Wo + qx``. So every tap is one unaligned vector load with a constant lane mask
(the pixels whose source is padding). With stride 1 and an output as wide as the input, the one
plane is the channel itself and filling it is a single contiguous copy.

Tasks take a run of channels each, so the scratch is set up once per task.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ...plan.geometry import ConvGeometry
from ..tir_helpers import F32, I32, KERNEL_ATTRS, RegisterRows, parallel_tasks
from .basis_rows import emit_maps_from_taps

#: Output pixels, in vectors, up to which an image counts as narrow.
NARROW_VECTORS = 4


def is_narrow(geom: ConvGeometry, lanes: int) -> bool:
    """Whether ``basis_narrow_kernel`` is used: at most ``NARROW_VECTORS`` vectors of output pixels,
    and each column phase of the input fits the output's width (a plane's rows must be ``Wo``
    wide for a tap to be a shift; a layer without padding, whose output is narrower than its
    input, is not)."""
    g = geom
    if g.out_height * g.out_width > NARROW_VECTORS * lanes:
        return False
    _, planes = _taps(g)
    return all(-(-(g.width - b) // g.stride[1]) <= g.out_width for _, b in planes)


@dataclass(frozen=True)
class _Tap:
    plane: int  # index into the used phase planes
    row_phase: int
    col_phase: int
    dy: int  # shift on the output grid
    dx: int


def _taps(g: ConvGeometry) -> tuple[list[_Tap], list[tuple[int, int]]]:
    """Each tap's phase plane and shift, and the (row, column) phases of the planes used."""
    (sh, sw), (dh, dw) = g.stride, g.dilation
    top, left = g.padding[0], g.padding[1]
    planes: list[tuple[int, int]] = []
    taps = []
    for ky in range(g.kernel_h):
        dy, a = divmod(ky * dh - top, sh)
        for kx in range(g.kernel_w):
            dx, b = divmod(kx * dw - left, sw)
            if (a, b) not in planes:
                planes.append((a, b))
            taps.append(_Tap(planes.index((a, b)), a, b, dy, dx))
    return taps, planes


def basis_narrow_kernel(geom: ConvGeometry, n_maps: int, n_channels: int, *, lanes: int = 16,
                        threads: int = 1) -> tirx.PrimFunc:
    """The basis convolution for a narrow image: same signature and result as ``basis_conv_kernel``,
    ``f(X, channels, map_ptr, weights, M)``. Requires ``is_narrow(geom, lanes)``."""
    g = geom
    if not is_narrow(g, lanes):
        raise ValueError(f"not a narrow image for this kernel: {g}")
    ho, wo = g.out_height, g.out_width
    sh, sw = g.stride
    plane_size, pixels = g.height * g.width, ho * wo
    taps, planes = _taps(g)
    plane_rows = max(-(-(g.height - a) // sh) for a, _ in planes)  # input rows of a phase, may exceed Ho
    plane_len = plane_rows * wo
    shifts = [t.plane * plane_len + t.dy * wo + t.dx for t in taps]
    front = max(0, -min(shifts))  # border before the planes, so every shifted load stays in the buffer
    length = front + max(len(planes) * plane_len, pixels + max(shifts))
    # stride 1, output as wide as the input: the one plane is the channel itself
    contiguous = (sh, sw) == (1, 1) and wo == g.width
    tasks_per_image = min(n_channels, max(8, 4 * threads))
    per_task = -(-n_channels // tasks_per_image)

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("penni_basis_narrow")
            T.func_attr(KERNEL_ATTRS)
            X = T.arg("X", T.Buffer((g.batch, g.in_channels, g.height, g.width), F32))
            channels = T.arg("channels", T.Buffer((n_channels,), I32))
            map_ptr = T.arg("map_ptr", T.Buffer((n_channels + 1,), I32))
            weights = T.arg("weights", T.Buffer((n_maps, g.kernel_h, g.kernel_w), F32))
            M = T.arg("M", T.Buffer((g.batch, n_maps, pixels), F32))
            flat_x = T.decl_buffer((g.batch, g.in_channels * plane_size), F32, data=X.data)

            def scratch():
                return (T.alloc_buffer((length,), F32),)

            def fill_planes(flat, n, i):
                if contiguous:
                    with T.vectorized(0, plane_size) as q:
                        T.buffer_store(flat, flat_x[n, i * plane_size + q], [front + q])
                    return
                # one strided row copy per plane row; the positions past the input's edge are
                # never written (the tap masks never select them)
                for k, (a, b) in enumerate(planes):
                    columns = -(-(g.width - b) // sw)
                    for row in range(plane_rows):
                        sy = row * sh + a
                        if sy < g.height:
                            with T.vectorized(0, columns) as x:
                                T.buffer_store(flat, X[n, i, sy, x * sw + b], [front + k * plane_len + row * wo + x])

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
                    fill_planes(flat, n, channels[c])
                    for p0 in range(0, pixels, lanes):
                        size = min(lanes, pixels - p0)
                        held = RegisterRows(len(taps), size)
                        for t, (tap, shift) in enumerate(zip(taps, shifts)):
                            with T.vectorized(0, size) as v:
                                # source, on the plane's grid, of output pixel p0 + v
                                py, px = (p0 + v) // wo + tap.dy, (p0 + v) % wo + tap.dx
                                inside = tirx.all(py >= 0, py < plane_rows, px >= 0, px < wo,
                                                  py * sh + tap.row_phase < g.height,
                                                  px * sw + tap.col_phase < g.width)
                                held.store(T.Select(inside, flat[front + p0 + v + shift], T.float32(0)), t, v)
                        emit_maps_from_taps(held, weights, g, map_ptr[c], map_ptr[c + 1], size, p0,
                                            lambda m, p, value, n=n: T.buffer_store(M, value, [n, m, p]))

            parallel_tasks(g.batch * tasks_per_image, threads, scratch, run)
    return ib.get()
