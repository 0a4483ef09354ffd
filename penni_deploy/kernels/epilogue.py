"""The epilogue fused into every convolution kernel, as a TIR expression (see ``plan.epilogue``)."""

from __future__ import annotations

from tvm.script.ir_builder import tirx as T

from ..plan.epilogue import Epilogue


def apply_epilogue(epilogue: Epilogue, value, bias, residual, n, o, p):
    """The TIR expression of ``epilogue`` applied to ``value`` at output ``(n, o, p)``."""
    if epilogue.bias:
        value = value + bias[o]
    if epilogue.residual:
        value = value + residual[n, o, p]
    if epilogue.relu:
        value = T.max(value, T.float32(0))
    return value
