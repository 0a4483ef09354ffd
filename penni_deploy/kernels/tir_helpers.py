"""Small helpers shared by the TIR kernel generators (IR-builder style).

Kernels here are generated per layer at compile time, so every extent is a Python int and tails
are emitted as separate, fully static loops instead of predicated ones: LLVM then vectorizes the
main part cleanly.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import tirx
from tvm.script.ir_builder import tirx as T

from ..plan.geometry import ConvGeometry

F32 = "float32"
I32 = "int32"

#: Attributes of every generated kernel: buffers never alias (lets LLVM vectorize freely), the
#: schedule is final (TVM's schedule rules skip it), and it is opaque to FuseOps (8 = kOpaque), so
#: neighbouring reshapes are never fused into it.
KERNEL_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8}


def static_blocks(extent: int, block: int, body: Callable[[object, int], None]) -> None:
    """Emit ``body(start, size)`` over ``[0, extent)`` in blocks of ``block`` plus one static tail.

    ``start`` is a loop variable expression for the full blocks and an int for the tail; ``size`` is
    always a Python int, so ``body`` can vectorize over it.
    """
    full, tail = divmod(extent, block)
    if full == 1:
        body(0, block)
    elif full > 1:
        with T.serial(0, full) as b:
            body(b * block, block)
    if tail:
        body(full * block, tail)


def pick_block(extent: int, preferred: int) -> int:
    """The vector block for an axis: ``preferred`` lanes, or the whole axis when it is shorter."""
    return min(extent, preferred)


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is <= ``limit`` (register blocking without tails)."""
    for cand in range(min(n, limit), 0, -1):
        if n % cand == 0:
            return cand
    return 1


def padded_tap(X, g: ConvGeometry, n, channel, y, x, ky: int, kx: int):
    """``X[n, channel]`` at the input position tap (ky, kx) of output (y, x) reads, 0 in the padding."""
    sy = y * g.stride[0] + ky * g.dilation[0] - g.padding[0]
    sx = x * g.stride[1] + kx * g.dilation[1] - g.padding[1]
    inside = tirx.all(sy >= 0, sy < g.height, sx >= 0, sx < g.width)
    return tirx.if_then_else(inside, X[n, channel, sy, sx], T.float32(0))


def parallel_tasks(total: int, workers: int, scratch: Callable[[], tuple], body: Callable[..., None]) -> None:
    """Run ``body(task, *buffers)`` for ``task`` in ``[0, total)`` in parallel, each task with the
    scratch buffers ``scratch()`` allocates.

    ``workers`` is the thread count the kernel is built for. (Slicing the tasks over one loop per
    worker, with the scratch allocated once per worker, miscompiled in TVM 0.27: the results were
    wrong whenever a worker ran more than one task; so each task allocates its own scratch.)
    """
    del workers
    with T.parallel(0, total) as task:
        body(task, *scratch())
