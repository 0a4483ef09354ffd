"""Argument declarations shared by the CPU and GPU variants of a kernel (inside a ``T.prim_func``).

The order is the contract of ``library.KernelLibrary``; declaring it once keeps the two targets'
kernels interchangeable for ``LowerConvComposites``.
"""

from __future__ import annotations

from tvm.script.ir_builder import tirx as T

from ..plan.epilogue import Epilogue
from .tir_helpers import F32, I32


def epilogue_args(epilogue: Epilogue, batch: int, out_channels: int, pixels: int):
    """``(bias, residual, Y)``: the optional epilogue inputs, then the output ``(N, Cout, pixels)``."""
    bias = T.arg("bias", T.Buffer((out_channels,), F32)) if epilogue.bias else None
    residual = T.arg("residual", T.Buffer((batch, out_channels, pixels), F32)) if epilogue.residual else None
    return bias, residual, T.arg("Y", T.Buffer((batch, out_channels, pixels), F32))


def csr_recombine_args(batch: int, n_maps: int, pixels: int, out_channels: int, nnz: int, epilogue: Epilogue):
    """``(M, indptr, indices, data, bias, residual, Y)`` of the recombination kernels."""
    maps = T.arg("M", T.Buffer((batch, n_maps, pixels), F32))
    indptr = T.arg("indptr", T.Buffer((out_channels + 1,), I32))
    indices = T.arg("indices", T.Buffer((nnz,), I32))
    data = T.arg("data", T.Buffer((nnz,), F32))
    return (maps, indptr, indices, data, *epilogue_args(epilogue, batch, out_channels, pixels))
