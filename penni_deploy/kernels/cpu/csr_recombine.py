"""Stage 2 of a PENNI layer on CPUs: sparse recombination ``Y = epilogue(C @ M)``.

``C`` is the layer's coefficient matrix (Cout × n_maps, known at compile time) and ``M`` the basis
maps from stage 1. Each task owns one output channel and streams its nonzeros' map rows through a
block of pixels held in vector registers, so each coefficient costs one load and one FMA per vector.
Empty rows produce just the epilogue. Three storage formats of ``C`` (``KernelConfig.format``):

- ``csr``: loop bounds read from ``indptr`` at run time;
- ``ell``: every row padded with zero coefficients to the longest row: fixed trip counts that LLVM
  can unroll, paid for with the padding's extra FMAs;
- ``unrolled``: no index arrays at all: the code is specialized to the sparsity pattern (each
  row's map indices are immediates; only the values are read, from a dense ``data`` array), and
  tasks run over pixel blocks and row chunks.

The coefficient-first order reuses this kernel with ``M`` = the layer input and no epilogue.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ...plan.epilogue import Epilogue
from ..epilogue import apply_epilogue
from ..signatures import csr_recombine_args, epilogue_args
from ..tir_helpers import F32, I32, KERNEL_ATTRS, RegisterRows, pick_block, static_blocks, vector_pieces


def csr_recombine_kernel(batch: int, n_maps: int, pixels: int, out_channels: int, nnz: int,
                         epilogue: Epilogue, *, lanes: int = 16, block: int = 4,
                         balanced: bool = False, offsets: bool = False) -> tirx.PrimFunc:
    """Generate the CSR recombination PrimFunc for one layer.

    Parameters
    ----------
    batch, n_maps, pixels, out_channels : int
        ``M`` is ``(batch, n_maps, pixels)``; ``Y`` is ``(batch, out_channels, pixels)``.
    nnz : int
        Nonzeros of the coefficient matrix (>= 1; an all-zero layer is not lowered to this kernel).
    epilogue : Epilogue
        Which of bias, residual and ReLU to fuse.
    lanes : int
        float32 lanes per vector register.
    block : int
        Pixels per step, in vector registers.
    balanced : bool
        Take an extra ``row_order (Cout,) int32`` argument (before the epilogue's) giving the order
        in which tasks visit the rows (:func:`balanced_row_order`).
    offsets : bool
        ``indices`` hold each nonzero's map row premultiplied by ``pixels`` (its element offset in
        an image's ``M``). A row's step is then one scalar index load feeding the vector load's
        address; with plain indices LLVM gathers four into a vector, scales it and extracts each
        lane again, a third of a narrow block's time.

    Returns
    -------
    tvm.tirx.PrimFunc
        ``f(M, indptr, indices, data, [row_order], [bias], [residual], Y)``.
    """
    pixel_block = pick_block(pixels, block * lanes)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("penni_csr_recombine")
            T.func_attr(KERNEL_ATTRS)
            if not balanced:
                M, indptr, indices, data, bias, residual, Y = csr_recombine_args(
                    batch, n_maps, pixels, out_channels, nnz, epilogue)
                order = None
            else:
                M = T.arg("M", T.Buffer((batch, n_maps, pixels), F32))
                indptr = T.arg("indptr", T.Buffer((out_channels + 1,), I32))
                indices = T.arg("indices", T.Buffer((nnz,), I32))
                data = T.arg("data", T.Buffer((nnz,), F32))
                order = T.arg("row_order", T.Buffer((out_channels,), I32))
                bias, residual, Y = epilogue_args(epilogue, batch, out_channels, pixels)

            flat_m = T.decl_buffer((batch, n_maps * pixels), F32, data=M.data)
            with T.parallel(0, batch * out_channels) as task:
                n = task // out_channels
                o = task % out_channels if order is None else order[task % out_channels]

                def one_block(p0, size, n=n, o=o):
                    if offsets:
                        emit_sparse_row(size, indptr[o], indptr[o + 1], lambda j: (data[j], indices[j]),
                                        lambda m, v: flat_m[n, m + p0 + v],
                                        lambda v, total: T.buffer_store(
                                            Y, apply_epilogue(epilogue, total, bias, residual, n, o, p0 + v),
                                            [n, o, p0 + v]), lanes=lanes)
                        return
                    _emit_row_block(M, Y, bias, residual, epilogue, n, o, p0, size, indptr[o], indptr[o + 1],
                                    lambda j: (data[j], indices[j]), lanes=lanes)

                static_blocks(pixels, pixel_block, one_block)
    return ib.get()


def balanced_row_order(indptr: np.ndarray) -> np.ndarray:
    """The order in which a ``balanced`` kernel's tasks visit the rows: longest, shortest, second
    longest, second shortest, ... (int32).

    TVM hands each thread one contiguous range of a parallel loop's tasks, so a longest-first order
    (right for a dynamic scheduler) would give the first thread every long row. Pairing long rows with
    short ones gives every contiguous range, whatever the thread count, about the same nonzeros.
    """
    by_length = np.argsort(-np.diff(indptr), kind="stable")
    order = np.empty_like(by_length)
    order[0::2] = by_length[: (len(by_length) + 1) // 2]
    order[1::2] = by_length[::-1][: len(by_length) // 2]
    return order.astype(np.int32)


#: Independent vector accumulators a row needs so that FMA latency (4 cycles) does not bound it.
_CHAINS = 4


def chains_for(size: int, lanes: int) -> int:
    """Accumulator chains per row for a pixel block of ``size``: a block of four or more vectors
    already has four independent FMA chains; a narrower one (the 4×4 and 2×2 layers of a CIFAR
    network) splits the row's nonzeros over several partial sums instead of waiting on one."""
    vectors = -(-size // lanes)
    return max(1, _CHAINS // vectors)


def emit_sparse_row(size: int, start, end, entry, load, finish, *, lanes: int,
                    static_count: int | None = None) -> None:
    """One block of ``size`` pixels of one output row: ``finish(v, Σ_j coef_j · load(map_j, v))``
    for ``j`` in ``[start, end)`` with ``entry(j) -> (coef, map index)``, the sum held in vector
    registers. ``static_count`` (ELL: every row the same length) lets short rows unroll."""
    chains = chains_for(size, lanes)
    acc = RegisterRows(chains, size)
    pieces = vector_pieces(size, lanes)
    for c in range(chains):
        for p0, width in pieces:
            with T.vectorized(0, width) as v:
                acc.store(T.float32(0), c, p0 + v)

    def accumulate(j, c):
        coef, m = entry(j)
        for p0, width in pieces:
            with T.vectorized(0, width) as v:
                acc.store(acc[c, p0 + v] + coef * load(m, p0 + v), c, p0 + v)

    if static_count is not None and static_count <= 8:
        for j in range(static_count):
            accumulate(start + j, j % chains)
    elif chains == 1:
        with T.serial(start, end) as j:
            accumulate(j, 0)
    else:
        rounds = (end - start) // chains
        with T.serial(0, rounds) as r:
            for c in range(chains):
                accumulate(start + r * chains + c, c)
        with T.serial(start + rounds * chains, end) as j:
            accumulate(j, 0)
    for p0, width in pieces:
        with T.vectorized(0, width) as v:
            finish(p0 + v, _sum([acc[c, p0 + v] for c in range(chains)]))


def _emit_row_block(M, Y, bias, residual, epilogue, n, o, p0, size, start, end, entry, *, lanes: int,
                    static_count: int | None = None) -> None:
    """``Y[n, o, p0:p0+size] = epilogue(Σ_j coef_j · M[n, map_j, p0:p0+size])``."""
    emit_sparse_row(size, start, end, entry, lambda m, v: M[n, m, p0 + v],
                    lambda v, total: T.buffer_store(
                        Y, apply_epilogue(epilogue, total, bias, residual, n, o, p0 + v), [n, o, p0 + v]),
                    lanes=lanes, static_count=static_count)


def ell_arrays(csr: scipy.sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray, int]:
    """``csr`` as ELL: ``(indices, data)`` of shape ``(rows * width,)``, rows padded with zeros
    (index 0, value 0) to ``width`` = the longest row (at least 1)."""
    lengths = np.diff(csr.indptr)
    width = max(1, int(lengths.max(initial=0)))
    rows = csr.shape[0]
    indices = np.zeros((rows, width), np.int32)
    data = np.zeros((rows, width), np.float32)
    for row in range(rows):
        start, end = csr.indptr[row], csr.indptr[row + 1]
        indices[row, : end - start] = csr.indices[start:end]
        data[row, : end - start] = csr.data[start:end]
    return indices.reshape(-1), data.reshape(-1), width


def ell_recombine_kernel(batch: int, n_maps: int, pixels: int, out_channels: int, width: int,
                         epilogue: Epilogue, *, lanes: int = 16, block: int = 4) -> tirx.PrimFunc:
    """The recombination with ``C`` in ELL form: ``f(M, ell_indices, ell_data, [bias], [residual], Y)``
    with ``(out_channels * width,)`` index and value arrays (see ``ell_arrays``)."""
    pixel_block = pick_block(pixels, block * lanes)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("penni_ell_recombine")
            T.func_attr(KERNEL_ATTRS)
            M = T.arg("M", T.Buffer((batch, n_maps, pixels), F32))
            indices = T.arg("ell_indices", T.Buffer((out_channels * width,), I32))
            data = T.arg("ell_data", T.Buffer((out_channels * width,), F32))
            bias, residual, Y = epilogue_args(epilogue, batch, out_channels, pixels)

            with T.parallel(0, batch * out_channels) as task:
                n = task // out_channels
                o = task % out_channels

                def one_block(p0, size, n=n, o=o):
                    _emit_row_block(M, Y, bias, residual, epilogue, n, o, p0, size, 0, width,
                                    lambda j: (data[o * width + j], indices[o * width + j]), lanes=lanes,
                                    static_count=width)

                static_blocks(pixels, pixel_block, one_block)
    return ib.get()


def _chunks(lengths: np.ndarray, count: int) -> list[list[int]]:
    """Split rows into ``count`` chunks of about equal nonzeros, keeping channel order."""
    target = max(1.0, lengths.sum() / count)
    chunks, current, filled = [], [], 0.0
    for row, length in enumerate(lengths):
        current.append(row)
        filled += length + 1  # +1: every row costs its epilogue
        if filled >= target * (len(chunks) + 1) and len(chunks) < count - 1:
            chunks.append(current)
            current = []
    chunks.append(current)
    return [c for c in chunks if c]


def _sum(terms: list) -> object:
    """Balanced sum: a shallow expression tree gives LLVM independent FMAs to interleave."""
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def unrolled_recombine_kernel(batch: int, n_maps: int, pixels: int, csr: scipy.sparse.csr_matrix,
                              epilogue: Epilogue, *, lanes: int = 16, block: int = 4,
                              row_chunks: int = 2) -> tirx.PrimFunc:
    """The recombination specialized to one sparsity pattern: ``f(M, data, [bias], [residual], Y)``
    with ``data`` the CSR values of ``csr``.

    Tasks are (image, pixel block, row chunk); ``row_chunks`` splits the rows into groups of equal
    work so that small images still give every thread a task. Code size grows with nnz.
    """
    out_channels = csr.shape[0]
    pixel_block = pick_block(pixels, block * lanes)
    n_blocks = -(-pixels // pixel_block)
    chunks = _chunks(np.diff(csr.indptr), row_chunks)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("penni_unrolled_recombine")
            T.func_attr(KERNEL_ATTRS)
            M = T.arg("M", T.Buffer((batch, n_maps, pixels), F32))
            data = T.arg("data", T.Buffer((max(csr.nnz, 1),), F32))
            bias, residual, Y = epilogue_args(epilogue, batch, out_channels, pixels)
            with T.parallel(0, batch * n_blocks * len(chunks)) as task:
                n = task // (n_blocks * len(chunks))
                b = task // len(chunks) % n_blocks
                chunk = task % len(chunks)
                for k, rows in enumerate(chunks):
                    with T.If(chunk == k):
                        with T.Then():
                            _unrolled_rows(M, data, Y, bias, residual, epilogue, csr, rows, n, b, pixel_block,
                                           pixels, lanes)
    return ib.get()


def _unrolled_rows(M, data, Y, bias, residual, epilogue, csr, rows, n, b, pixel_block, pixels, lanes):
    full, tail = divmod(pixels, pixel_block)

    def emit(p0, size):
        for o in rows:
            start, end = csr.indptr[o], csr.indptr[o + 1]
            for q0, width in vector_pieces(size, lanes):
                with T.vectorized(0, width) as v:
                    p = p0 + q0 + v
                    terms = [data[j] * M[n, int(csr.indices[j]), p] for j in range(start, end)]
                    value = _sum(terms) if terms else T.float32(0)
                    T.buffer_store(Y, apply_epilogue(epilogue, value, bias, residual, n, o, p), [n, o, p])

    if not tail:
        emit(b * pixel_block, pixel_block)
        return
    with T.If(b < full):
        with T.Then():
            emit(b * pixel_block, pixel_block)
        with T.Else():
            emit(full * pixel_block, tail)
