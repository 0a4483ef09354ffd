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


class RegisterRows:
    """A small ``rows × width`` float32 array meant to live in vector registers (accumulators, held
    taps), read as ``a[i, j]`` and written with ``a.store(value, i, j)``; ``i`` a Python int.

    Each row is its own plain (global-scope) buffer under 1 KiB, which TVM's CPU lowering leaves as
    a stack ``alloca`` that LLVM promotes to registers. A ``scope="local"`` buffer, or any buffer of
    1 KiB or more, becomes a ``TVMBackendAllocWorkspace`` call instead: a free-list walk per
    allocation, and memory LLVM keeps loading and storing. On the CSR recombination that was 1.25×
    (64 pixels) to 1.75× (4 pixels) of the kernel's time.
    """

    def __init__(self, rows: int, width: int):
        self.rows = [T.alloc_buffer((width,), F32) for _ in range(rows)]

    def __getitem__(self, index):
        i, j = index
        return self.rows[i][j]

    def store(self, value, i: int, j) -> None:
        T.buffer_store(self.rows[i], value, [j])


def vector_pieces(width: int, lanes: int) -> list[tuple[int, int]]:
    """``(offset, size)`` pieces of at most one vector register covering ``[0, width)``.

    A value held in registers across a loop must be vectorized piece by piece: one loop over an odd
    width (49 pixels of a 7×7 map) makes LLVM a ``<49 x float>`` vector, which it splits into single
    lanes on every iteration (measured 3× slower on ResNet50's 7×7 recombination).
    """
    return [(start, min(lanes, width - start)) for start in range(0, width, lanes)]


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


#: Parallel chunks a task loop is cut into at most (``parallel_tasks``): enough for 16 threads to
#: balance uneven tasks, few enough that per-chunk scratch allocations stay off the profile.
MAX_TASK_CHUNKS = 32


def parallel_tasks(total: int, workers: int, scratch: Callable[[], tuple], body: Callable[..., None]) -> None:
    """Run ``body(task, *buffers)`` for ``task`` in ``[0, total)`` in parallel, on scratch buffers
    ``scratch()`` allocates once per chunk of consecutive tasks; ``body`` writes every scratch element
    it reads (the buffers come uninitialized from TVM's workspace pool, and carry the chunk's
    previous task).

    A scratch buffer over 1 KiB is a ``TVMBackendAllocWorkspace`` call, whose pool scans a free list;
    once per chunk instead of once per channel removes most of those calls (on VGG16 the time did not
    measurably change: the per-row accumulators, see ``RegisterRows``, were the costly ones).
    ``workers``, the thread count the kernel is built for, does not bound the chunk count: an artifact
    loaded with more threads still uses them. The loop over a chunk's tasks starts at zero: TVM 0.27
    miscompiles a loop starting at a variable around inner loops starting at variables (their
    indices come out relative to the outer start), the likely cause of the wrong results an earlier
    per-worker version gave.
    """
    del workers
    chunks = min(total, MAX_TASK_CHUNKS)
    per_chunk = -(-total // chunks)
    chunks = -(-total // per_chunk)  # no empty chunk
    with T.parallel(0, chunks) as chunk:
        buffers = scratch()
        with T.serial(0, T.min(per_chunk, total - chunk * per_chunk)) as k:
            body(chunk * per_chunk + k, *buffers)
