"""Register-tiled GEMM for the dense layers: 1×1 and k×k convs (NCHW) and Linear.

Every dense layer is ``C[rows, cols] = A[rows, K] · B[K, cols]`` where ``cols`` is the axis held in
vector registers. The micro-kernel keeps a ``rows × cols`` tile of C in registers (``rows``
accumulators of ``cols / lanes`` vectors each) while K runs: per step it loads ``cols / lanes``
vectors of B, broadcasts ``rows`` scalars of A and issues ``rows · cols / lanes`` FMAs. Both operands
are read from contiguous memory: the weights are packed at compile time into the order the
micro-kernel reads them, and the activations are copied per task into a small panel (which, for a
strided or k×k conv, is also the im2col gather of just that panel: there is no full im2col copy).

Two orientations of a conv, chosen per layer (``pick_orientation``):

- ``pixels``: vectors over output pixels, A = the weights (``Cout × K``), B = the activation panel.
  Best when a layer has many pixels (ImageNet's 56×56 and 28×28 stages).
- ``channels``: vectors over output channels, A = the activation panel (broadcast per pixel), B = the
  weights packed ``K × Cout``. Best when pixels are few (7×7, 14×14: a 49-pixel row wastes most of
  its last vector) and for Linear, where the rows are the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ...plan.epilogue import Epilogue
from ...plan.geometry import ConvGeometry
from ..epilogue import apply_epilogue
from ..tir_helpers import F32, I32, KERNEL_ATTRS, RegisterRows, vector_pieces
from . import bf16

ORIENTATIONS = ("pixels", "channels")
#: Operand precisions of the dense kernels: float32 FMAs, or bf16 pairs into float32 (``vdpbf16ps``).
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class GemmTile:
    """The register tile: ``rows`` accumulators of ``vectors`` vectors of ``lanes`` floats."""

    rows: int
    vectors: int
    lanes: int

    @property
    def cols(self) -> int:
        return self.vectors * self.lanes


def default_tile(lanes: int) -> GemmTile:
    """A tile that fits the vector register file: 32 registers with AVX-512, 16 with AVX2/SSE (both
    orientations have the same register budget).

    AVX-512: 8 × 3 vectors = 24 accumulators + 3 loads of B + 1 broadcast. AVX2: 4 × 3 = 12 + 4.
    Measured on one znver4 core, other shapes (6×4, 12×2, 4×6) were within ±10% either way on
    ResNet50's layers, none better on all of them.
    """
    if lanes >= 16:
        return GemmTile(rows=8, vectors=3, lanes=lanes)
    return GemmTile(rows=4, vectors=3, lanes=lanes)


def _vector_ops(extent: int, block: int, lanes: int) -> int:
    """Vector instructions to cover ``extent`` in blocks of ``block`` (the tail rounds up to a vector)."""
    full, tail = divmod(extent, block)
    return full * (block // lanes) + (-(-tail // lanes))


def pick_orientation(pixels: int, out_channels: int, lanes: int) -> str:
    """The orientation that wastes fewer vector lanes on tails (ties go to ``pixels``)."""
    tile = default_tile(lanes)
    by_pixels = _vector_ops(pixels, tile.cols, lanes) * out_channels
    by_channels = _vector_ops(out_channels, tile.cols, lanes) * pixels
    return "channels" if by_channels < 0.9 * by_pixels else "pixels"


def pack_weights(weight: np.ndarray, orientation: str, tile: GemmTile) -> np.ndarray:
    """The (Cout, K) weights in the order the micro-kernel reads them.

    ``pixels``: ``(ceil(Cout / rows), K, rows)``: the ``rows`` weights broadcast at step k are adjacent.
    ``channels``: ``(ceil(Cout / cols), K, cols)``: the B vectors of step k are adjacent.
    Output channels past Cout are zero (their results are never stored).
    """
    cout, depth = weight.shape
    width = tile.rows if orientation == "pixels" else tile.cols
    blocks = -(-cout // width)
    padded = np.zeros((blocks * width, depth), np.float32)
    padded[:cout] = weight
    # (blocks·width, K) -> (blocks, width, K) -> (blocks, K, width)
    return np.ascontiguousarray(padded.reshape(blocks, width, depth).transpose(0, 2, 1))


def emit_tile(rows: int, cols: int, depth: int, a_at: Callable, b_at: Callable, store: Callable,
              lanes: int) -> None:
    """One register tile: ``acc[i, c] = Σ_k a_at(i, k) · b_at(k, c)``, then ``store(i, c, acc[i, c])``.

    ``rows`` and ``cols`` are Python ints: the tile is unrolled over rows and over vectors of
    ``lanes`` columns (the last one shorter when ``cols`` is not a multiple), each a separate
    vectorized loop. (One ``cols``-wide loop would make LLVM vectors like <48 x float>, which it
    splits into scalars and keeps on the stack: 20× slower.)
    """
    pieces = vector_pieces(cols, lanes)
    acc = RegisterRows(rows, cols)
    for i in range(rows):
        for c0, width in pieces:
            with T.vectorized(0, width) as v:
                acc.store(T.float32(0), i, c0 + v)
    with T.serial(0, depth) as k:
        for i in range(rows):
            for c0, width in pieces:
                with T.vectorized(0, width) as v:
                    acc.store(acc[i, c0 + v] + a_at(i, k) * b_at(k, c0 + v), i, c0 + v)
    for i in range(rows):
        for c0, width in pieces:
            with T.vectorized(0, width) as v:
                store(i, c0 + v, acc[i, c0 + v])


def _static_split(extent: int, block: int, body: Callable[[object, int], None], index) -> None:
    """``body(start, size)`` for block ``index`` of ``extent`` split in blocks of ``block``: full blocks
    share one code path, a shorter last block gets its own (static sizes, so both vectorize)."""
    full, tail = divmod(extent, block)
    if tail == 0:
        body(index * block, block)
    elif full == 0:
        body(0, tail)
    else:
        with T.If(index < full):
            with T.Then():
                body(index * block, block)
            with T.Else():
                body(full * block, tail)


def _row_tiles(size: int, rows: int, row_tile: Callable[[object, int], None]) -> None:
    """``row_tile(r0, nrows)`` over ``size`` pixels in tiles of ``rows`` (a loop) and one static tail."""
    full, tail = divmod(size, rows)
    if full:
        with T.serial(0, full) as r:
            row_tile(r * rows, rows)
    if tail:
        row_tile(full * rows, tail)


def split_tasks(blocks: int, images: int, threads: int, min_tasks_per_thread: int = 4) -> int:
    """Into how many chunks to cut ``blocks`` (of output channels) so that there are enough tasks:
    when the pixels alone are too few, a multiple of ``threads`` (where there are blocks enough), so
    that each thread's contiguous range of tasks (TVM hands them out statically) covers whole chunks
    over the same pixels. Many pixel blocks need no channel chunks: each chunk re-reads the panels."""
    want = max(1, -(-threads * min_tasks_per_thread // max(1, images)))
    if want > 1 and blocks >= threads:
        want = -(-want // threads) * threads
    return max(1, min(blocks, want))


def conv_source(geom: ConvGeometry) -> tuple[str, tuple[int, int], np.ndarray]:
    """Where the GEMM reads its activations from, for a conv of ``geom``.

    Returns ``(kind, (rows, row_width), base)``:

    - ``direct``: a stride-1 unpadded 1×1 conv reads its input rows as they are;
    - ``subsampled``: a strided unpadded 1×1 conv first copies every stride-th pixel into a compact
      (N, C, Ho·Wo) buffer (1/stride² of the input, read once; gathering it per task instead costs a
      scalar load per element, LLVM emitting no vector gathers for znver4, and ran 1.7× slower);
    - ``padded``: a k×k (or padded) conv first copies the input into a zero-padded buffer (a copy of
      the input, not the k²-times im2col), then each task gathers its panel from there;
    - ``gathered``: the same without padding.

    ``(rows, row_width)`` is the shape of each channel's plane in that source and ``base[p]`` the
    offset of output pixel p's first tap in it (tap ``(ky, kx)`` adds ``ky·dh·row_width + kx·dw``).
    """
    g = geom
    taps = g.kernel_h * g.kernel_w
    if taps == 1 and not any(g.padding):
        kind = "direct" if g.stride == (1, 1) else "subsampled"
        pixels = g.out_height * g.out_width
        return kind, (g.out_height, g.out_width), np.arange(pixels, dtype=np.int32)
    kind = "padded" if any(g.padding) else "gathered"
    rows, width = (g.window_height, g.window_width) if any(g.padding) else (g.height, g.width)
    y = np.arange(g.out_height, dtype=np.int64)[:, None] * g.stride[0]
    x = np.arange(g.out_width, dtype=np.int64)[None, :] * g.stride[1]
    return kind, (rows, width), (y * width + x).reshape(-1).astype(np.int32)


def needs_base_table(geom: ConvGeometry) -> bool:
    """Whether the kernel takes ``conv_source``'s ``base`` table (the gathering kinds)."""
    return conv_source(geom)[0] in ("padded", "gathered")


def gemm_conv_kernel(geom: ConvGeometry, out_channels: int, epilogue: Epilogue, *, lanes: int = 16,
                     threads: int = 1, orientation: str | None = None,
                     tile: GemmTile | None = None, precision: str = "fp32") -> tirx.PrimFunc:
    """A dense NCHW conv2d (groups = 1) as a register-tiled GEMM with the epilogue fused.

    Parameters
    ----------
    geom : ConvGeometry
        Input shape, kernel, stride, padding, dilation.
    out_channels : int
        Cout.
    epilogue : Epilogue
        Bias / residual / ReLU fused into the store.
    lanes : int
        float32 lanes per vector register.
    threads : int
        Threads the kernel is built for (sets how finely the work is cut into tasks).
    orientation : str, optional
        ``pixels`` or ``channels`` (see the module docstring); by default ``pick_orientation``.
    tile : GemmTile, optional
        The register tile; ``default_tile`` by default.
    precision : str
        ``fp32``, or ``bf16``: weights and the activations they meet rounded to bf16, products summed
        in float32 by the ``vdpbf16ps`` micro-kernel (``bf16.py``); input and output stay float32.

    Returns
    -------
    tvm.tirx.PrimFunc
        ``f(X, Wp, [base], [bias], [residual], Y)`` with ``Wp = pack_weights(W.reshape(Cout, -1), orientation,
        tile)`` (bf16: ``bf16.pack_weight_pairs`` of it), ``base`` from ``conv_source`` (only where
        ``needs_base_table``), ``Y (N, Cout, Ho·Wo)``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    pairs = precision == "bf16"
    g = geom
    pixels = g.out_height * g.out_width
    taps = g.kernel_h * g.kernel_w
    depth = g.in_channels * taps
    orientation = orientation or pick_orientation(pixels, out_channels, lanes)
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, not {orientation!r}")
    tile = tile or default_tile(lanes)
    kind, (src_h, src_w), _ = conv_source(g)
    direct = kind in ("direct", "subsampled")  # panels are contiguous rows of the source
    plane = src_h * src_w

    weight_width = tile.rows if orientation == "pixels" else tile.cols
    if pairs and (tile.rows > 8 or tile.cols > 48):
        raise ValueError("the bf16 micro-kernel holds at most an 8 × 48 tile")
    kpairs = -(-depth // 2)
    o_blocks = -(-out_channels // weight_width)
    # Pixels per task: one vector tile (pixels orientation), or a group of row tiles (channels).
    pixel_block = tile.cols if orientation == "pixels" else tile.rows * 4
    p_blocks = -(-pixels // pixel_block)
    chunks = split_tasks(o_blocks, g.batch * p_blocks, threads)
    per_chunk = -(-o_blocks // chunks)
    chunks = -(-o_blocks // per_chunk)

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("gemm_conv")
            T.func_attr(KERNEL_ATTRS)
            X = T.arg("X", T.Buffer((g.batch, g.in_channels, g.height, g.width), F32))
            Wp = T.arg("Wp", T.Buffer((o_blocks, kpairs, weight_width), bf16.U32) if pairs
                       else T.Buffer((o_blocks, depth, weight_width), F32))
            base = None if direct else T.arg("base", T.Buffer((pixels,), I32))
            bias = T.arg("bias", T.Buffer((out_channels,), F32)) if epilogue.bias else None
            residual = (T.arg("residual", T.Buffer((g.batch, out_channels, pixels), F32))
                        if epilogue.residual else None)
            Y = T.arg("Y", T.Buffer((g.batch, out_channels, pixels), F32))

            if kind == "padded":
                src = T.alloc_buffer((g.batch, g.in_channels * plane), F32)
                _emit_zero_padded_copy(X, src, g, src_h, src_w)
            elif kind == "subsampled":
                src = T.alloc_buffer((g.batch, g.in_channels * plane), F32)
                _emit_subsample(X, src, g)
            else:
                src = T.decl_buffer((g.batch, g.in_channels * plane), F32, data=X.data)

            def out(n, o, p, value):
                T.buffer_store(Y, apply_epilogue(epilogue, value, bias, residual, n, o, p), [n, o, p])

            # Pixel blocks vary fastest: the last one is often short (49 pixels = 32 + 17), and with
            # them outermost one thread got every long block (ResNet50's 7×7 layers ran at 75%).
            with T.parallel(0, g.batch * p_blocks * chunks) as task:
                n = task // (p_blocks * chunks)
                chunk = task // p_blocks % chunks
                pb = task % p_blocks

                def pixel_task(p0, size):
                    def operand(k, v):
                        """Row k of the activation panel of these pixels, at column v."""
                        if direct:
                            return src[n, k * plane + p0 + v]
                        tap = k % taps
                        row = (k // taps) * plane + (tap // g.kernel_w) * (g.dilation[0] * src_w) \
                            + (tap % g.kernel_w) * g.dilation[1]
                        return src[n, row + base[p0 + v]]

                    if pairs:
                        panel = T.alloc_buffer((kpairs, size), bf16.U32)
                        bf16.emit_pair_panel(panel, depth, size, operand)
                    else:
                        # The activation panel of these pixels: `depth` contiguous rows of `size`.
                        panel = T.alloc_buffer((depth, size), F32)
                        with T.serial(0, depth) as k:
                            with T.vectorized(0, size) as v:
                                T.buffer_store(panel, operand(k, v), [k, v])

                    def o_block(ob, rows):
                        o0 = ob * weight_width
                        if pairs:
                            bf16_block(ob, o0, rows, size)
                        elif orientation == "pixels":
                            emit_tile(rows, size, depth, lambda i, k: Wp[ob, k, i], lambda k, v: panel[k, v],
                                      lambda i, v, value: out(n, o0 + i, p0 + v, value), lanes)
                        else:
                            def row_tile(r0, nrows):
                                emit_tile(nrows, rows, depth, lambda i, k: panel[k, r0 + i], lambda k, v: Wp[ob, k, v],
                                          lambda i, v, value: out(n, o0 + v, p0 + r0 + i, value), lanes)

                            _row_tiles(size, tile.rows, row_tile)

                    def bf16_block(ob, o0, rows, size):
                        """One block of output channels on the micro-kernel, its epilogue applied in
                        registers, written to Y."""
                        y_at = (n * out_channels + o0) * pixels + p0
                        fused = dict(epilogue=epilogue, bias=bias, bias_offset=o0, residual=residual)
                        if orientation == "pixels":
                            bf16.emit_tile_call(Wp, ob * kpairs * weight_width, weight_width, panel, 0, size,
                                                kpairs, rows, size, Y, y_at, pixels, 1, bias_per="rows", **fused)
                        else:
                            def row_tile(r0, nrows):
                                bf16.emit_tile_call(panel, r0, size, Wp, ob * kpairs * weight_width, weight_width,
                                                    kpairs, nrows, rows, Y, y_at + r0, 1, pixels, bias_per="cols",
                                                    **fused)

                            _row_tiles(size, tile.rows, row_tile)

                    first = chunk * per_chunk
                    last_full = out_channels // weight_width  # blocks with every channel real
                    tail_rows = out_channels % weight_width
                    # A chunk runs its full blocks; the block holding the last, partial set of real
                    # channels (if any) goes to the last chunk, emitted with only its real rows.
                    with T.serial(0, per_chunk) as j:
                        ob = first + j
                        with T.If(ob < last_full):
                            with T.Then():
                                o_block(ob, weight_width)
                    if tail_rows:
                        with T.If(chunk == chunks - 1):
                            with T.Then():
                                o_block(last_full, tail_rows)

                _static_split(pixels, pixel_block, pixel_task, pb)
    return ib.get()


def _emit_zero_padded_copy(X, dst, g: ConvGeometry, rows: int, width: int) -> None:
    """``dst[n, c·rows·width + y·width + x]`` = X with ``g.padding`` zeros around it, cropped to the
    window the outputs read; interior rows are copied with vectors, the border zeroed apart (a
    per-element bounds test would defeat vectorization)."""
    top, left = g.padding[0], g.padding[1]
    inner_w = max(0, min(width - left, g.width))
    with T.parallel(0, g.batch * g.in_channels) as nc:
        n, c = nc // g.in_channels, nc % g.in_channels
        with T.serial(0, rows) as y:
            start = c * rows * width + y * width
            with T.vectorized(0, width) as x:
                T.buffer_store(dst, T.float32(0), [n, start + x])
            sy = y - top
            with T.If(tirx.all(sy >= 0, sy < g.height)):
                with T.Then():
                    with T.vectorized(0, inner_w) as x:
                        T.buffer_store(dst, X[n, c, sy, x], [n, start + left + x])


def _emit_subsample(X, dst, g: ConvGeometry) -> None:
    """``dst[n, c·Ho·Wo + y·Wo + x] = X[n, c, y·sh, x·sw]``: the pixels a strided 1×1 conv reads."""
    ho, wo = g.out_height, g.out_width
    with T.parallel(0, g.batch * g.in_channels) as nc:
        n, c = nc // g.in_channels, nc % g.in_channels
        with T.serial(0, ho) as y:
            with T.vectorized(0, wo) as x:
                T.buffer_store(dst, X[n, c, y * g.stride[0], x * g.stride[1]], [n, c * ho * wo + y * wo + x])


def linear_kernel(batch: int, depth: int, out_features: int, *, lanes: int = 16, threads: int = 1,
                  tile: GemmTile | None = None, precision: str = "fp32") -> tirx.PrimFunc:
    """``Y = X · W`` for a Linear layer (X ``(N, K)``, W given as ``pack_weights(W.T, "channels", tile)``).

    The channels orientation with the batch as rows: each step broadcasts one input value per row
    and streams the packed weights, so at batch 1 (a GEMV, bound by reading the weights) the weights
    are read once, contiguously, split over the threads by output-feature chunks.

    With ``precision="bf16"`` the weights come as ``bf16.pack_weight_pairs`` of that packing and each
    task rounds its rows of X into pairs: the weights streamed are half the bytes.

    Returns
    -------
    tvm.tirx.PrimFunc
        ``f(X, Wp, Y)`` with ``Y (N, out_features)``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    tile = tile or default_tile(lanes)
    cols = tile.cols
    o_blocks = -(-out_features // cols)
    row_blocks = -(-batch // tile.rows)
    if precision == "bf16":
        return _linear_bf16(batch, depth, out_features, tile, o_blocks, row_blocks)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("linear")
            T.func_attr(KERNEL_ATTRS)
            X = T.arg("X", T.Buffer((batch, depth), F32))
            Wp = T.arg("Wp", T.Buffer((o_blocks, depth, cols), F32))
            Y = T.arg("Y", T.Buffer((batch, out_features), F32))
            with T.parallel(0, row_blocks * o_blocks) as task:
                rb, ob = task // o_blocks, task % o_blocks

                def tile_at(r0, nrows):
                    def block(o_width):
                        emit_tile(nrows, o_width, depth, lambda i, k: X[r0 + i, k], lambda k, v: Wp[ob, k, v],
                                  lambda i, v, value: T.buffer_store(Y, value, [r0 + i, ob * cols + v]), lanes)

                    _static_split(out_features, cols, lambda _o0, width: block(width), ob)

                _static_split(batch, tile.rows, tile_at, rb)
    return ib.get()


def _linear_bf16(batch: int, depth: int, out_features: int, tile: GemmTile, o_blocks: int,
                 row_blocks: int) -> tirx.PrimFunc:
    """``linear_kernel`` on the bf16 micro-kernel: per task, the task's rows of X as pairs over K
    (``(ceil(K/2), rows)``, the broadcast operand), times one block of packed weight pairs."""
    cols, kpairs = tile.cols, -(-depth // 2)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("linear")
            T.func_attr(KERNEL_ATTRS)
            X = T.arg("X", T.Buffer((batch, depth), F32))
            Wp = T.arg("Wp", T.Buffer((o_blocks, kpairs, cols), bf16.U32))
            Y = T.arg("Y", T.Buffer((batch, out_features), F32))
            with T.parallel(0, row_blocks * o_blocks) as task:
                rb, ob = task // o_blocks, task % o_blocks

                def tile_at(r0, nrows):
                    panel = T.alloc_buffer((kpairs, nrows), bf16.U32)
                    bf16.emit_pair_panel(panel, depth, nrows, lambda k, i: X[r0 + i, k])

                    def block(o0, o_width):
                        bf16.emit_tile_call(panel, 0, nrows, Wp, ob * kpairs * cols, cols, kpairs, nrows, o_width,
                                            Y, r0 * out_features + o0, out_features, 1)

                    _static_split(out_features, cols, block, ob)

                _static_split(batch, tile.rows, tile_at, rb)
    return ib.get()
