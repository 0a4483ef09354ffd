"""int8 convs on x86 with ``vpdpbusd`` (AVX512_VNNI): weight packing and the TIR task loop.

The tile itself is C (``native/int8_conv.c``: quantize the rows a tile reads into channel quads,
or copy the words the previous int8 conv wrote; sparse weight quads per block of four output
channels; float epilogue, which can also write the output as the next int8 conv's words,
``plan.quantize.Int8Handoff``); this module packs a conv's weights into what it reads, generates the
TIR kernel that hands it one (image, row tile, channel part) task at a time, and estimates its time.

A PENNI layer runs here as the conv it computes, ``W[o, i] = Σ_r C[o, i, r]·B[r]``, with the
all-zero (block, channel quad, tap) weight quads skipped: ``vpdpbusd`` does four multiply-adds per
lane on one quad, and the basis stage (one input channel per map) has no such reduction to feed it.
``CpuKernels.int8_penni`` decides per layer, with ``int8_cost``, whether that beats the float32
PENNI kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ...plan.epilogue import Epilogue
from ...plan.geometry import ConvGeometry
from ...plan.quantize import InputQuantization, Int8Handoff, channel_quads, quantize_weights
from ..tir_helpers import F32, I32, KERNEL_ATTRS, parallel_tasks
from .native import Q8_CONV_TILE

U32 = "uint32"
#: Order of the int32 geometry array the C tile reads (its ``G_*`` enum).
GEOMETRY_FIELDS = ("cin", "h", "w", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "ho", "wo", "cout", "row_words")
#: The C tile's register block: output channels × vectors of 16 pixels (``PENNI_Q8_OUTPUTS``, ``_VECTORS``).
BLOCK_OUTPUTS = 4
TILE_VECTORS = 4
#: Words past the last row of the scratch, for the masked lanes of the last vector.
SLACK_WORDS = 32
#: The C tile's flags.
RELU, BIAS, RESIDUAL, QUADS_IN, QUADS_OUT, NO_FLOAT_OUT, RESIDUAL_QUADS = 1, 2, 4, 8, 16, 32, 64


def slots_per_tile(g: ConvGeometry, rows: int) -> int:
    """Vectors of 16 output pixels in a tile of ``rows`` rows (rows of 8 or 4 columns share one)."""
    wo = g.out_width
    if wo > 8:
        return rows * -(-wo // 16)
    return -(-rows // (2 if wo > 4 else 4))


def tile_rows_for(g: ConvGeometry, threads: int = 1, max_slots: int = 4 * TILE_VECTORS) -> int:
    """Output rows per task: among the divisors of the output height whose vectors fill whole
    register blocks (``TILE_VECTORS``) within ``max_slots``, the one that quantizes the fewest input
    rows in all (each tile quantizes its kernel's extra rows again, 4 rows of a 3×3 conv read 6;
    each channel part its tile's rows); else the most rows within ``max_slots`` vectors."""
    divisors = [r for r in range(1, g.out_height + 1) if g.out_height % r == 0]
    full = [r for r in divisors if slots_per_tile(g, r) % TILE_VECTORS == 0 and slots_per_tile(g, r) <= max_slots]

    def quantized_rows(rows: int) -> int:
        tiles = g.batch * (g.out_height // rows)
        return tiles * channel_parts(tiles, threads, threads) * in_rows(g, rows)

    if full:
        return min(full, key=lambda r: (quantized_rows(r), -r))
    fitting = [r for r in divisors if slots_per_tile(g, r) <= max_slots]
    return fitting[-1] if fitting else 1


def channel_parts(tasks: int, blocks: int, threads: int) -> int:
    """Into how many parts a tile's output channel blocks are split: enough that ``tasks`` (images ×
    tiles) keep every thread busy, and no more (each part quantizes the tile's rows again)."""
    return max(1, min(blocks, -(-threads // max(tasks, 1))))


def in_rows(g: ConvGeometry, rows: int) -> int:
    """Input rows one tile of ``rows`` output rows reads."""
    return (rows - 1) * g.stride[0] + (g.kernel_h - 1) * g.dilation[0] + 1


def row_words(g: ConvGeometry) -> int:
    """Words of one quantized row: the padded input row, or what the tile's vectors read if more."""
    per_row = -(-g.out_width // 16)
    sw, dw = g.stride[1], g.dilation[1]
    reach = (per_row * 16 - 1) * sw + (g.kernel_w - 1) * dw + 1 + (1 if sw == 2 else 0)
    _, left, _, right = g.padding
    return max(g.width + left + right, reach)


def scratch_words(g: ConvGeometry, rows: int) -> int:
    return -(-g.in_channels // 4) * in_rows(g, rows) * row_words(g) + SLACK_WORDS


@dataclass(frozen=True, eq=False)
class PackedInt8Conv:
    """What the C tile reads for one conv (see int8_conv.c), and the quantized weights themselves."""

    geometry: np.ndarray  # (len(GEOMETRY_FIELDS),) int32
    qptr: np.ndarray  # (output blocks + 1,) int32, CSR over blocks of BLOCK_OUTPUTS channels
    qoff: np.ndarray  # (block quads,) int32
    qw: np.ndarray  # (block quads · BLOCK_OUTPUTS,) int32: per channel of the block, four int8 weights
    comp: np.ndarray  # (Cout,) int32
    scale: np.ndarray  # (Cout,) float32
    weights: np.ndarray  # (Cout, Cin, kh, kw) int8
    input: InputQuantization
    rows: int

    @property
    def constants(self) -> list[np.ndarray]:
        return [self.geometry, self.qptr, self.qoff, self.qw, self.comp, self.scale]

    @property
    def nnz_quads(self) -> int:
        """Block quads: each is ``BLOCK_OUTPUTS`` × 4 multiply-adds per pixel."""
        return int(self.qptr[-1])


def pack_int8_conv(weight: np.ndarray, g: ConvGeometry, quant: InputQuantization, rows: int) -> PackedInt8Conv:
    """Quantize an OIHW float32 conv per output channel and lay it out for the C tile."""
    cout, cin, kh, kw = weight.shape
    wq, w_scale = quantize_weights(weight)
    quads = channel_quads(cin)
    padded = np.zeros((cout, quads * 4, kh, kw), np.int8)
    padded[:, :cin] = wq
    # (Cout, quad, ky, kx, 4 channels) bytes -> one little-endian word per (o, quad, ky, kx)
    as_bytes = padded.reshape(cout, quads, 4, kh, kw).transpose(0, 1, 3, 4, 2).copy()
    words = as_bytes.view(np.uint32).reshape(cout, quads, kh, kw).view(np.int32)
    n_rows, width = in_rows(g, rows), row_words(g)
    q_idx, ky_idx, kx_idx = np.meshgrid(np.arange(quads), np.arange(kh), np.arange(kw), indexing="ij")
    offsets = (q_idx * n_rows + ky_idx * g.dilation[0]) * width + kx_idx * g.dilation[1]
    # blocks of BLOCK_OUTPUTS channels (the last padded with zero weights) over the union of their quads
    blocks = -(-cout // BLOCK_OUTPUTS)
    block_words = np.zeros((blocks * BLOCK_OUTPUTS, quads * kh * kw), np.int32)
    block_words[:cout] = words.reshape(cout, -1)
    block_words = block_words.reshape(blocks, BLOCK_OUTPUTS, -1).transpose(0, 2, 1)  # (block, quad tap, u)
    keep = np.any(block_words != 0, axis=2)
    qptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    qoff = np.broadcast_to(offsets.reshape(1, -1), keep.shape)[keep].astype(np.int32)
    qw = np.ascontiguousarray(block_words[keep]).reshape(-1).astype(np.int32)
    comp = (quant.zero_point * wq.reshape(cout, -1).astype(np.int64).sum(axis=1)).astype(np.int32)
    scale = (np.float32(quant.scale) * w_scale).astype(np.float32)
    top, left, _, _ = g.padding
    geometry = np.array([cin, g.height, g.width, kh, kw, g.stride[0], g.stride[1], top, left, g.dilation[0],
                         g.dilation[1], g.out_height, g.out_width, cout, width], np.int32)
    return PackedInt8Conv(geometry, qptr, qoff, qw, comp, scale, wq, quant, rows)


def int8_conv_kernel(g: ConvGeometry, packed: PackedInt8Conv, epilogue: Epilogue, threads: int = 1,
                     handoff: Int8Handoff = Int8Handoff()) -> tirx.PrimFunc:
    """The TIR kernel: ``f(X, geometry, qptr, qoff, qw, comp, scale, [bias], [residual], [Y], [YQ])``,
    tasks over (image, tile of ``packed.rows`` output rows, part of the output channels) in parallel,
    each one call of the C tile; ``threads`` only decides how finely small images are split.

    ``handoff`` says what the layer reads and writes: ``X`` float32 ``(N, Cin, H, W)``, or with
    ``quads_in`` the words ``(N, ⌈Cin/4⌉, H·W)`` the previous layer wrote, already quantized as this
    layer's input; the residual float32 ``(N, Cout, Ho·Wo)``, or with ``residual`` the words
    ``(N, ⌈Cout/4⌉, Ho·Wo)`` another layer wrote; ``Y`` float32 ``(N, Cout, Ho·Wo)`` unless not
    ``float_out``; ``YQ``, with ``out``, the words ``(N, ⌈Cout/4⌉, Ho·Wo)`` of the output quantized
    for the next layer."""
    cout = int(packed.geometry[GEOMETRY_FIELDS.index("cout")])
    ho, wo = g.out_height, g.out_width
    rows = packed.rows
    n_tiles = ho // rows
    nnz = max(packed.nnz_quads, 1)
    blocks = len(packed.qptr) - 1
    parts = channel_parts(g.batch * n_tiles, blocks, threads)
    per_part = -(-blocks // parts)
    parts = -(-blocks // per_part)
    in_quads, out_quads = channel_quads(g.in_channels), channel_quads(cout)
    image = (in_quads if handoff.quads_in else g.in_channels) * g.height * g.width
    flags = (RELU if epilogue.relu else 0) | (BIAS if epilogue.bias else 0) | (RESIDUAL if epilogue.residual else 0)
    flags |= (QUADS_IN if handoff.quads_in else 0) | (QUADS_OUT if handoff.out else 0)
    flags |= 0 if handoff.float_out else NO_FLOAT_OUT
    flags |= RESIDUAL_QUADS if epilogue.residual and handoff.residual else 0
    res_quant = handoff.residual or packed.input  # unused without RESIDUAL_QUADS
    inv_scale = float(np.float32(1.0 / packed.input.scale))
    out_quant = handoff.out or packed.input  # unused without QUADS_OUT
    out_inv_scale = float(np.float32(1.0 / out_quant.scale))

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("penni_int8_conv")
            T.func_attr(KERNEL_ATTRS)
            if handoff.quads_in:
                X = T.arg("X", T.Buffer((g.batch, in_quads, g.height * g.width), U32))
            else:
                X = T.arg("X", T.Buffer((g.batch, g.in_channels, g.height, g.width), F32))
            geometry = T.arg("geometry", T.Buffer((len(GEOMETRY_FIELDS),), I32))
            qptr = T.arg("qptr", T.Buffer((blocks + 1,), I32))
            qoff = T.arg("qoff", T.Buffer((nnz,), I32))
            qw = T.arg("qw", T.Buffer((nnz * BLOCK_OUTPUTS,), I32))
            comp = T.arg("comp", T.Buffer((cout,), I32))
            scale = T.arg("scale", T.Buffer((cout,), F32))
            bias = T.arg("bias", T.Buffer((cout,), F32)) if epilogue.bias else None
            residual = None
            if epilogue.residual and handoff.residual:
                residual = T.arg("residual", T.Buffer((g.batch, out_quads, ho * wo), U32))
            elif epilogue.residual:
                residual = T.arg("residual", T.Buffer((g.batch, cout, ho * wo), F32))
            Y = T.arg("Y", T.Buffer((g.batch, cout, ho * wo), F32)) if handoff.float_out else None
            YQ = T.arg("YQ", T.Buffer((g.batch, out_quads, ho * wo), U32)) if handoff.out else None

            def scratch():
                return (T.alloc_buffer((scratch_words(g, rows),), U32),)

            def tile(task, xq):
                n = task // (n_tiles * parts)
                y0 = task // parts % n_tiles * rows
                first = task % parts * per_part
                out_at = n * cout * ho * wo
                unused = scale.access_ptr("r")  # for the pointers the flags say the tile never reads
                T.evaluate(T.call_extern(
                    "int32", Q8_CONV_TILE, X.access_ptr("r", offset=n * image), geometry.access_ptr("r"),
                    y0, T.int32(rows), first, T.min(first + per_part, blocks),
                    T.float32(inv_scale), T.int32(packed.input.zero_point),
                    xq.access_ptr("w"), qptr.access_ptr("r"), qoff.access_ptr("r"), qw.access_ptr("r"),
                    comp.access_ptr("r"), scale.access_ptr("r"),
                    bias.access_ptr("r") if bias is not None else unused,
                    residual.access_ptr("r", offset=n * (out_quads if handoff.residual else cout) * ho * wo)
                    if residual is not None else unused,
                    T.float32(res_quant.scale), T.int32(res_quant.zero_point),
                    Y.access_ptr("w", offset=out_at) if Y is not None else unused,
                    YQ.access_ptr("w", offset=n * out_quads * ho * wo) if YQ is not None else unused,
                    T.float32(out_inv_scale), T.int32(out_quant.zero_point), T.int32(flags)))

            parallel_tasks(g.batch * n_tiles * parts, threads, scratch, tile)
    return ib.get()


#: Vector instructions per microsecond, 2 threads, measured on the dev host's layers (ResNet20 and
#: ResNet18 at batch 1): the int8 tile, the float32 PENNI kernels and the float32 dense GEMM. Only
#: their ratios matter: they pick, per layer, which kernel an ``auto`` int8 build uses.
INT8_RATE, FP32_PENNI_RATE, FP32_GEMM_RATE = 9.5e3, 6.8e3, 11.5e3
#: Cost of quantizing one channel quad of 16 pixels, and of the epilogue of one vector, in instructions.
QUANTIZE_OPS, EPILOGUE_OPS = 12, 6


def int8_cost(g: ConvGeometry, packed: PackedInt8Conv) -> float:
    """Estimated time (µs per image, relative) of the int8 conv: ``vpdpbusd`` over every vector slot
    a tile computes (slots past the tile too), the rows' quantization and the epilogue."""
    rows = packed.rows
    tiles = g.out_height // rows
    groups = -(-slots_per_tile(g, rows) // TILE_VECTORS)
    cout = int(packed.geometry[GEOMETRY_FIELDS.index("cout")])
    dpbusd = tiles * groups * packed.nnz_quads * BLOCK_OUTPUTS * TILE_VECTORS * (1 if g.stride[1] <= 2 else 3)
    read_rows = min(in_rows(g, rows), rows * g.kernel_h)
    quantize = tiles * -(-g.in_channels // 4) * read_rows * -(-g.width // 16) * QUANTIZE_OPS
    epilogue = tiles * groups * TILE_VECTORS * cout * EPILOGUE_OPS
    return (dpbusd + quantize + epilogue) / INT8_RATE


def fp32_penni_cost(n_maps: int, taps: int, nnz: int, pixels: int, lanes: int) -> float:
    """Estimated time of the float32 PENNI kernels: an FMA per map tap and per nonzero, per vector."""
    return (n_maps * taps + nnz) * -(-pixels // lanes) / FP32_PENNI_RATE


def fp32_dense_cost(g: ConvGeometry, cout: int, lanes: int) -> float:
    """Estimated time of the float32 dense GEMM conv."""
    macs = cout * g.in_channels * g.kernel_h * g.kernel_w * g.out_height * g.out_width
    return macs / lanes / FP32_GEMM_RATE
