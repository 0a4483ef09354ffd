"""NumPy/SciPy references of every kernel's exact arithmetic (CPU and GPU kernels compute the same).

Tests check each generated kernel against these and against PyTorch.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from ..plan.epilogue import Epilogue
from ..plan.geometry import ConvGeometry


def basis_conv_reference(x: np.ndarray, geom: ConvGeometry, map_channels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """NumPy reference: ``M[n, m] = conv2d(X[n, map_channels[m]], weights[m])``, flattened."""
    g = geom
    top, left, bottom, right = g.padding
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho, wo = g.out_height, g.out_width
    out = np.zeros((g.batch, len(map_channels), ho, wo), np.float64)
    for ky in range(g.kernel_h):
        for kx in range(g.kernel_w):
            y0, x0 = ky * g.dilation[0], kx * g.dilation[1]
            patch = xp[:, map_channels, y0 : y0 + (ho - 1) * g.stride[0] + 1 : g.stride[0],
                       x0 : x0 + (wo - 1) * g.stride[1] + 1 : g.stride[1]]
            out += patch * weights[None, :, ky, kx, None, None]
    return out.reshape(g.batch, len(map_channels), ho * wo).astype(np.float32)


def csr_recombine_reference(maps: np.ndarray, coefs: scipy.sparse.csr_matrix, epilogue: Epilogue,
                            bias: np.ndarray | None = None, residual: np.ndarray | None = None) -> np.ndarray:
    """SciPy reference: ``epilogue(coefs @ maps[n])`` for each image ``n``."""
    acc = np.stack([coefs @ maps[n].astype(np.float64) for n in range(maps.shape[0])])
    return epilogue.apply_reference(acc, bias, residual)


def dense_conv_reference(x: np.ndarray, weight: np.ndarray, geom: ConvGeometry, epilogue: Epilogue,
                         bias: np.ndarray | None = None, residual: np.ndarray | None = None) -> np.ndarray:
    """NumPy reference of the same conv (OIHW weight), output flattened to ``(N, Cout, Ho*Wo)``."""
    g = geom
    top, left, bottom, right = g.padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho, wo = g.out_height, g.out_width
    acc = np.zeros((g.batch, weight.shape[0], ho, wo))
    for ky in range(g.kernel_h):
        for kx in range(g.kernel_w):
            y0, x0 = ky * g.dilation[0], kx * g.dilation[1]
            patch = xp[:, :, y0 : y0 + (ho - 1) * g.stride[0] + 1 : g.stride[0], x0 : x0 + (wo - 1) * g.stride[1] + 1 : g.stride[1]]
            acc += np.einsum("nihw,oi->nohw", patch, weight[:, :, ky, kx])
    return epilogue.apply_reference(acc.reshape(g.batch, weight.shape[0], ho * wo), bias, residual)
