"""bfloat16 operands for the dense GEMM: rounding, pair packing, and the micro-kernel call.

``vdpbf16ps`` reads both operands as pairs of bf16 values along the reduction axis K, packed in 32
bits (element 2k low, 2k+1 high), and adds both products of a pair into a float32 lane. So:

- weights are rounded and packed at compile time (``pack_weight_pairs``), an odd K padded with a
  zero;
- activations stay float32 between layers; each task rounds the panel it reads into pairs
  (``emit_pair_panel``), which is also where the float32 GEMM copies its panel;
- the micro-kernel (``native/bf16_tile.c``) is called per register tile (``emit_tile_call``), with the
  conv's epilogue applied to its registers.

Rounding is to nearest, ties to even, as ``vcvtne2ps2bf16`` and PyTorch's ``.bfloat16()`` do.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import tirx as T

from ...plan.epilogue import Epilogue
from .native import BF16_TILE

U32 = "uint32"


def round_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """The bf16 bit patterns (as uint32, in the low 16 bits) of float32 ``values``, rounded to nearest even."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)


def round_to_bf16(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to bf16 precision, as float32 (what the kernels multiply)."""
    return (round_to_bf16_bits(values) << 16).view(np.float32)


def pack_pairs(values: np.ndarray, axis: int) -> np.ndarray:
    """``values`` (float32) rounded to bf16 and packed in pairs along ``axis`` into uint32 (an odd
    length padded with a zero): the axis halves, rounding up."""
    values = np.moveaxis(np.asarray(values, np.float32), axis, 0)
    if values.shape[0] % 2:
        values = np.concatenate([values, np.zeros((1,) + values.shape[1:], np.float32)])
    bits = round_to_bf16_bits(values)
    packed = bits[0::2] | (bits[1::2] << 16)
    return np.ascontiguousarray(np.moveaxis(packed, 0, axis))


def pack_weight_pairs(packed_weights: np.ndarray) -> np.ndarray:
    """float32 weights in ``gemm.pack_weights`` order, ``(blocks, K, width)``, as bf16 pairs over K:
    ``(blocks, ceil(K / 2), width)`` uint32."""
    return pack_pairs(packed_weights, axis=1)


def _bf16_rounded_bits(value):
    """A float32 TIR value's bits rounded to bf16 in the high half (low half garbage, masked by the caller)."""
    u = T.reinterpret(U32, value)
    return u + tirx.const(0x7FFF, U32) + ((u >> tirx.const(16, U32)) & tirx.const(1, U32))


def pair_word(low, high):
    """The 32-bit pair of two float32 TIR values (``high`` None: zero), each rounded to bf16."""
    word = _bf16_rounded_bits(low) >> tirx.const(16, U32)
    if high is not None:
        word = word | (_bf16_rounded_bits(high) & tirx.const(0xFFFF0000, U32))
    return word


def emit_pair_panel(panel, depth: int, size: int, read) -> None:
    """``panel[p, v] = pair(read(2p, v), read(2p + 1, v))`` for the ``ceil(depth / 2)`` pairs and
    ``size`` columns; ``read(k, v)`` is the float32 operand, vectorized over ``v``."""
    full = depth // 2
    if full:
        with T.serial(0, full) as p:
            with T.vectorized(0, size) as v:
                T.buffer_store(panel, pair_word(read(2 * p, v), read(2 * p + 1, v)), [p, v])
    if depth % 2:
        with T.vectorized(0, size) as v:
            T.buffer_store(panel, pair_word(read(depth - 1, v), None), [full, v])


#: ``flags`` bits of the micro-kernel's fused epilogue (mirrors the enum in bf16_tile.c).
RELU, BIAS_ROWS, BIAS_COLS, RESIDUAL = 1, 2, 4, 8


def emit_tile_call(a, a_offset, lda: int, b, b_offset, ldb: int, kpairs: int, rows: int, cols: int,
                   c, c_offset, row_stride: int, col_stride: int, *, epilogue: Epilogue | None = None,
                   bias=None, bias_offset=0, bias_per: str = "rows", residual=None) -> None:
    """One micro-kernel call: ``c[c_offset + i·row_stride + j·col_stride] = epilogue(Σ_p dot2(a[a_offset +
    p·lda + i], b[b_offset + p·ldb + j]))`` for ``i < rows <= 8``, ``j < cols <= 48`` (see bf16_tile.c).

    The epilogue runs on the registers: ``bias[bias_offset + i]`` (``bias_per="rows"``) or ``+ j``
    (``"cols"``), ``residual`` read at c's offsets, then ReLU; each part only where ``epilogue`` has it.
    """
    epilogue = epilogue or Epilogue()
    flags = (RELU if epilogue.relu else 0) | (RESIDUAL if epilogue.residual else 0)
    if epilogue.bias:
        flags |= BIAS_ROWS if bias_per == "rows" else BIAS_COLS
    c_ptr = c.access_ptr("w", offset=c_offset)
    # Parts that are off get a valid pointer the kernel never reads (TIR has no null handle literal).
    bias_ptr = bias.access_ptr("r", offset=bias_offset) if epilogue.bias else c_ptr
    residual_ptr = residual.access_ptr("r", offset=c_offset) if epilogue.residual else c_ptr
    T.evaluate(T.call_extern("int32", BF16_TILE,
                             a.access_ptr("r", offset=a_offset), T.int32(lda),
                             b.access_ptr("r", offset=b_offset), T.int32(ldb),
                             T.int32(kpairs), T.int32(rows), T.int32(cols),
                             c_ptr, T.int32(row_stride), T.int32(col_stride),
                             bias_ptr, residual_ptr, T.int32(flags)))
