"""One launch grid for the GPU kernels, emitted as real CUDA threads or as plain loops.

Every GPU kernel here maps a 2-D tile of (rows × pixels) outputs onto a block of
``rows_per_block × pixels_per_block`` threads: ``threadIdx.x`` walks pixels (consecutive threads
read consecutive addresses: coalesced), ``threadIdx.y`` walks rows (maps or output channels). With
``on_gpu=False`` the very same index arithmetic is emitted as serial loops, so the kernel's maths
can be compiled for the CPU and checked against PyTorch on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from tvm.script.ir_builder import tirx as T


@dataclass(frozen=True)
class TileGrid:
    """``batch × rows × pixels`` outputs in tiles of ``rows_per_block × pixels_per_block``."""

    batch: int
    rows: int
    pixels: int
    max_threads: int = 256

    @property
    def pixels_per_block(self) -> int:
        # Whole warps along the pixels, no wider than needed, at most max_threads.
        warp_multiple = -(-self.pixels // 32) * 32
        return min(self.max_threads, warp_multiple)

    @property
    def rows_per_block(self) -> int:
        return max(1, min(self.rows, self.max_threads // self.pixels_per_block))

    @property
    def row_blocks(self) -> int:
        return -(-self.rows // self.rows_per_block)

    @property
    def pixel_blocks(self) -> int:
        return -(-self.pixels // self.pixels_per_block)

    @property
    def blocks(self) -> int:
        return self.batch * self.row_blocks * self.pixel_blocks


@contextlib.contextmanager
def tile_indices(grid: TileGrid, on_gpu: bool):
    """Yield ``(n, row, pixel)`` of this thread and open a guard ``row < rows and pixel < pixels``."""
    with contextlib.ExitStack() as stack:
        if on_gpu:
            block = stack.enter_context(T.launch_thread("blockIdx.x", grid.blocks))
            ty = stack.enter_context(T.launch_thread("threadIdx.y", grid.rows_per_block))
            tx = stack.enter_context(T.launch_thread("threadIdx.x", grid.pixels_per_block))
        else:
            block = stack.enter_context(T.serial(0, grid.blocks))
            ty = stack.enter_context(T.serial(0, grid.rows_per_block))
            tx = stack.enter_context(T.serial(0, grid.pixels_per_block))
        pixel_block = block % grid.pixel_blocks
        row_block = block // grid.pixel_blocks % grid.row_blocks
        n = block // (grid.pixel_blocks * grid.row_blocks)
        row = row_block * grid.rows_per_block + ty
        pixel = pixel_block * grid.pixels_per_block + tx
        stack.enter_context(T.If(T.And(row < grid.rows, pixel < grid.pixels)))
        stack.enter_context(T.Then())
        yield n, row, pixel
