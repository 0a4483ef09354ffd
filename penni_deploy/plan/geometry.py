"""Convolution shapes and the (channel, basis) map bookkeeping shared by all kernel generators."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConvGeometry:
    """Shape of one 2-D convolution, NCHW, symmetric or asymmetric zero padding."""

    batch: int
    in_channels: int
    height: int
    width: int
    kernel_h: int
    kernel_w: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)

    @property
    def out_height(self) -> int:
        top, _, bottom, _ = self.padding
        span = (self.kernel_h - 1) * self.dilation[0] + 1
        return (self.height + top + bottom - span) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        _, left, _, right = self.padding
        span = (self.kernel_w - 1) * self.dilation[1] + 1
        return (self.width + left + right - span) // self.stride[1] + 1

    @property
    def window_height(self) -> int:
        """Rows of padded input the outputs actually read."""
        return (self.out_height - 1) * self.stride[0] + (self.kernel_h - 1) * self.dilation[0] + 1

    @property
    def window_width(self) -> int:
        return (self.out_width - 1) * self.stride[1] + (self.kernel_w - 1) * self.dilation[1] + 1


def group_maps_by_channel(map_channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For maps sorted by channel: the distinct channels and CSR-style pointers into the maps.

    Returns ``(channels, map_ptr)`` with maps ``map_ptr[c]:map_ptr[c+1]`` reading ``channels[c]``.
    """
    map_channels = np.asarray(map_channels, dtype=np.int64)
    if map_channels.size and np.any(np.diff(map_channels) < 0):
        raise ValueError("maps must be sorted by input channel")
    channels, counts = np.unique(map_channels, return_counts=True)
    map_ptr = np.concatenate([[0], np.cumsum(counts)])
    return channels.astype(np.int32), map_ptr.astype(np.int32)
