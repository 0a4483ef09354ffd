"""Which elementwise steps follow a convolution's accumulation: ``act(acc + bias[o] + residual[n, o, p])``.

Fusing them saves one full pass over the output per layer; the graph pass that groups a conv with its
bias add, residual add and ReLU (``FuseConvEpilogues``) decides which parts are present, and every
kernel generator applies them in its store (``kernels.epilogue.apply_epilogue``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Epilogue:
    """Which elementwise steps follow the accumulation, in this fixed order.

    Parameters
    ----------
    bias : bool
        Add a per-output-channel bias vector (shape ``(Cout,)``).
    residual : bool
        Add a tensor of the output's shape (a ResNet shortcut).
    relu : bool
        Clamp at zero last.
    """

    bias: bool = False
    residual: bool = False
    relu: bool = False

    def describe(self) -> str:
        """A short tag for reports, such as ``+bias+res+relu``."""
        parts = [name for name, on in (("bias", self.bias), ("res", self.residual), ("relu", self.relu)) if on]
        return "".join("+" + p for p in parts)

    def apply_reference(self, acc: np.ndarray, bias: np.ndarray | None, residual: np.ndarray | None) -> np.ndarray:
        """NumPy reference of the epilogue on ``acc`` of shape ``(N, Cout, ...)``."""
        out = acc.astype(np.float32, copy=True)
        if self.bias:
            out += bias.reshape((1, -1) + (1,) * (out.ndim - 2))
        if self.residual:
            out += residual
        if self.relu:
            np.maximum(out, 0, out=out)
        return out
