"""Small helpers shared by the TIR kernel generators (IR-builder style).

Kernels here are generated per layer at compile time, so every extent is a Python int and tails
are emitted as separate, fully static loops instead of predicated ones: LLVM then vectorizes the
main part cleanly.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm.script.ir_builder import tirx as T

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
