"""The inner loop both CPU basis-conv kernels share: all maps of one input channel.

The ``kh·kw`` shifted copies of the channel ("taps") are laid out once, flattened over the output
pixels, so that every later vector is full width even when a row is narrower than a register (the
4×4 and 8×8 layers of a CIFAR ResNet would otherwise use a quarter or half of each AVX-512
register). Then, per vector of pixels, the taps are loaded into registers once and every map of
the channel (up to d) is ``kh·kw`` FMAs with broadcast weights: loads drop by up to d×.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import tirx
from tvm.script.ir_builder import tirx as T

from ...plan.geometry import ConvGeometry
from ..tir_helpers import F32, RegisterRows, static_blocks


def taps_shape(geom: ConvGeometry, rows: int) -> tuple[int, int]:
    """Shape of the scratch buffer ``emit_channel_maps`` needs."""
    return geom.kernel_h * geom.kernel_w, rows * geom.out_width


def phases_shape(geom: ConvGeometry, window_rows: int) -> tuple[int, int, int] | None:
    """Shape of the column-phase scratch ``emit_channel_maps`` needs for a column stride above 1
    (``None`` at stride 1): ``(stride, window_rows, ceil(window_width / stride))``."""
    sw = geom.stride[1]
    return None if sw == 1 else (sw, window_rows, -(-geom.window_width // sw))


def emit_column_phases(padded, phases, geom: ConvGeometry, window_rows: int) -> None:
    """``phases[b, r, x] = padded[r, x·sw + b]``: the window split by column phase, so that a strided
    conv's taps are contiguous loads (``(x0 + v)·sw + kx·dw = (x0 + v + q)·sw + b``). Each window
    element is read strided once here instead of once per tap (49 times for a 7×7 stem)."""
    sw, wp = geom.stride[1], geom.window_width
    for b in range(sw):
        with T.serial(0, window_rows) as r:
            with T.vectorized(0, -(-(wp - b) // sw)) as x:
                T.buffer_store(phases, padded[r, x * sw + b], [b, r, x])


def emit_channel_maps(padded, taps, weights, geom: ConvGeometry, rows: int, first_map, end_map, lanes: int,
                      store: Callable[[object, object, object], None], phases=None) -> None:
    """Compute the maps ``first_map..end_map`` (kernels ``weights[m]``) of the zero-padded channel
    buffer ``padded`` for output rows ``0..rows``; each vector goes to ``store(m, pixel, value)``
    with ``pixel`` flattened as ``y * out_width + x``. ``taps`` is scratch of ``taps_shape``;
    with a column stride, ``phases`` is scratch of ``phases_shape`` (see ``emit_column_phases``).

    Rows at least a vector wide read their taps straight from ``padded``, a vector per row block;
    narrower rows first lay the taps out flat over the whole tile so the vectors stay full.
    """
    g = geom
    (sh, sw), (dh, dw) = g.stride, g.dilation
    wo = g.out_width
    n_taps = g.kernel_h * g.kernel_w
    if sw > 1:
        if phases is None:
            raise ValueError("a column stride needs the phases scratch (phases_shape)")
        emit_column_phases(padded, phases, g, phases.shape[1])

    def tap(row, kx, x):
        """``padded[row, x·sw + kx·dw]``, read contiguously in ``x``."""
        if sw == 1:
            return padded[row, x + kx * dw]
        shift, phase = divmod(kx * dw, sw)
        return phases[phase, row, x + shift]

    def maps_from(held, size, pixel):
        emit_maps_from_taps(held, weights, geom, first_map, end_map, size, pixel, store)

    if wo >= lanes:
        with T.serial(0, rows) as y:

            def row_block(x0, size, y=y):
                held = RegisterRows(n_taps, size)
                for ky in range(g.kernel_h):
                    for kx in range(g.kernel_w):
                        with T.vectorized(0, size) as v:
                            held.store(tap(y * sh + ky * dh, kx, x0 + v), ky * g.kernel_w + kx, v)
                maps_from(held, size, y * wo + x0)

            static_blocks(wo, lanes, row_block)
        return

    pixels = rows * wo
    for ky in range(g.kernel_h):
        for kx in range(g.kernel_w):
            with T.serial(0, rows) as y:
                with T.vectorized(0, wo) as x:
                    T.buffer_store(taps, tap(y * sh + ky * dh, kx, x), [ky * g.kernel_w + kx, y * wo + x])

    def pixel_block(p0, size):
        held = RegisterRows(n_taps, size)
        for t in range(n_taps):
            with T.vectorized(0, size) as v:
                held.store(taps[t, p0 + v], t, v)
        maps_from(held, size, p0)

    static_blocks(pixels, min(pixels, lanes), pixel_block)


def emit_maps_from_taps(held, weights, geom: ConvGeometry, first_map, end_map, size: int, pixel,
                        store: Callable[[object, object, object], None]) -> None:
    """Maps ``first_map..end_map`` of one vector of ``size`` pixels from its taps ``held``
    (``kh·kw × size``, in registers): ``kh·kw`` FMAs with broadcast weights per map."""
    g = geom
    with T.serial(first_map, end_map) as m:
        with T.vectorized(0, size) as v:
            acc = None
            for ky in range(g.kernel_h):
                for kx in range(g.kernel_w):
                    term = held[ky * g.kernel_w + kx, v] * weights[m, ky, kx]
                    acc = term if acc is None else acc + term
            store(m, pixel + v, acc)


def emit_padded_copy(padded, read, geom: ConvGeometry, first_row, rows: int, *, static_rows: bool) -> None:
    """Fill a zero-padded window buffer: ``padded[yy, left + x] = read(sy, x)`` for the window rows
    ``yy < rows`` whose input row ``sy = first_row + yy - top`` exists, zeros elsewhere.

    The interior is written with plain vector copies and the border with vector zeros (a
    per-element bounds test would make the copy scalar, and it dominated the basis conv).
    ``first_row`` is a Python int when ``static_rows`` (the interior rows are then known here).
    """
    g = geom
    top, left = g.padding[0], g.padding[1]
    wp = g.window_width
    cols = min(g.width, wp - left)  # input columns the window reads

    def interior_row(yy, sy):
        if left:
            with T.vectorized(0, left) as x:
                T.buffer_store(padded, T.float32(0), [yy, x])
        with T.vectorized(0, cols) as x:
            T.buffer_store(padded, read(sy, x), [yy, left + x])
        if wp - left - cols:
            with T.vectorized(0, wp - left - cols) as x:
                T.buffer_store(padded, T.float32(0), [yy, left + cols + x])

    def zero_rows(start, end):
        if end > start:
            with T.serial(start, end) as yy:
                with T.vectorized(0, wp) as x:
                    T.buffer_store(padded, T.float32(0), [yy, x])

    if static_rows:
        start = min(rows, max(0, top - first_row))
        end = max(start, min(rows, g.height + top - first_row))
        zero_rows(0, start)
        if end > start:
            with T.serial(start, end) as yy:
                interior_row(yy, first_row + yy - top)
        zero_rows(end, rows)
        return
    with T.serial(0, rows) as yy:
        sy = first_row + yy - top
        with T.If(tirx.all(sy >= 0, sy < g.height)):
            with T.Then():
                interior_row(yy, sy)
            with T.Else():
                with T.vectorized(0, wp) as x:
                    T.buffer_store(padded, T.float32(0), [yy, x])
