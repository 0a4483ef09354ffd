"""Schedules for the ops TVM legalizes itself (pooling, Linear, adds, pads, ...) on x86.

TVM 0.27 has CPU rules for GEMV and reductions only; anything else would run as naive,
single-threaded loops. ``ScheduleRemainingOps`` applies TVM's CPU rules where they fit and
otherwise :class:`ScheduleBetweenConvs`. Our generated kernels are marked ``tir.is_scheduled`` and
left alone.

What the ops between the convs need, from profiles of ResNet50 and VGG16 (``penni-deploy profile``):

- one loop nest per op, not one per legalized step: a BatchNorm1d + ReLU legalizes to a dozen
  elementwise blocks, each its own parallel loop (a thread-pool launch apiece);
- no materialized padding: a padded max pool legalizes to a padded copy of its input (3.3 MB for
  ResNet50's), a workspace allocated on every call, then the pool; inlined, the padding is a bound
  check in the pool's loads;
- pooling windows as the inner reduction of a row: parallel over (n, c, output row), the window
  loops outside the output-column loop so consecutive columns are computed together;
- no threads for tiny ops: below ``PARALLEL_MIN_WORK`` loop iterations the launch costs more than
  the op (a 512-element BatchNorm took 25 µs on two threads).
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.s_tir.schedule import ScheduleError

logger = logging.getLogger(__name__)

#: Innermost spatial loops up to this long are vectorized whole; longer ones are split first.
_MAX_VECTOR_LANES = 64

#: Lanes of the vectorized inner loop when a longer loop is split (one AVX-512 register of fp32).
_SPLIT_LANES = 16

#: Reductions this short (pooling windows) run outside the innermost spatial loop.
_MAX_WINDOW = 64

#: Output rows of a window reduction up to this wide are vectorized by the schedule.
_MAX_WINDOW_LANES = 32

#: Loop iterations below which an op runs on one thread (thread-pool launch ~ 5-20 µs).
PARALLEL_MIN_WORK = 16384


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _product(values) -> int | None:
    total = 1
    for v in values:
        if v is None:
            return None
        total *= v
    return total



def _normalized(rule: CPUScheduleRule, func, target: tvm.target.Target):
    """``(schedule, block infos)`` of a PrimFunc ``rule`` may schedule for ``target``, else None."""
    if not isinstance(func, tirx.PrimFunc) or not rule.is_target_available(target):
        return None
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    return None if infos is None else (sch, infos)

class ScheduleBetweenConvs(CPUScheduleRule):
    """Fallback rule: inline the elementwise steps, then one parallel, vectorized loop nest per op.

    Each block left after inlining is a spatial nest (``S…S``) or a spatial nest over a reduction
    (``S…SR…R``). A short reduction (a pooling window) moves inside the spatial loops but outside the
    last one, whose init and update are then vectorized; a long one (a global mean) stays innermost.
    The leading spatial loops are fused and run in parallel when the op is big enough. A padding
    block (a padded pool's input) is not inlined, where its bound checks would keep the pool's loads
    scalar: it is computed per parallel iteration (one padded channel) into a small buffer, as a
    vectorized fill of the pad value and a vectorized copy of the interior.
    """

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        normalized = _normalized(self, func, target)
        if normalized is None:
            return None
        sch, infos = normalized
        pads = [info.block_rv for info in infos if _is_padding(sch, info.block_rv)]
        pad_names = {sch.get(pad).name_hint for pad in pads}
        rest = [info for info in infos if sch.get(info.block_rv).name_hint not in pad_names]
        for info in try_inline(sch, rest):
            kinds = info.dom_kind()
            loops = sch.get_loops(info.block_rv)
            n_spatial = len(kinds) - len(kinds.lstrip("S"))
            if n_spatial == 0 or len(loops) != len(kinds) or set(kinds[n_spatial:]) - {"R"}:
                continue  # nothing to parallelize, or an iteration kind this rule does not order
            producers = {sch.get(b).name_hint for b in sch.get_producers(info.block_rv)}
            pad = next((p for p in pads if sch.get(p).name_hint in producers), None)
            try:
                _schedule_nest(sch, info.block_rv, loops[:n_spatial], loops[n_spatial:], pad)
            except ScheduleError as exc:  # a pattern this rule misjudged: the plain fallback takes it
                logger.debug("ScheduleBetweenConvs declined %s: %s", sch.get(info.block_rv).name_hint,
                             str(exc).splitlines()[0])
                return None
        return sch


def _is_padding(sch: s_tir.Schedule, block) -> bool:
    loops = sch.get_loops(block)
    return bool(loops) and sch.can_decompose_padding(block, loops[0])


def _schedule_nest(sch: s_tir.Schedule, block, spatial: list, reduction: list, pad=None) -> None:
    extents = [_extent(sch, loop) for loop in spatial + reduction]
    work = _product(extents)
    parallel = work is None or work >= PARALLEL_MIN_WORK
    window = _product(extents[len(spatial):])
    inner = None  # the spatial loop to vectorize
    if (len(spatial) >= 2 or not reduction) and (not reduction or (window is not None and window <= _MAX_WINDOW)):
        inner, spatial = spatial[-1], spatial[:-1]
        if reduction:
            sch.reorder(*spatial, *reduction, inner)
        elif (_extent(sch, inner) or 0) > _MAX_VECTOR_LANES:
            # a long row: vectors of it innermost, the rest of the row shared out with the outer loops
            row, inner = sch.split(inner, factors=[None, _SPLIT_LANES])
            spatial = [*spatial, row]
    # With a padding producer, parallel over the planes (all but the last two spatial loops), and
    # each plane padded at the top of its iteration.
    outer = spatial[:-1] if pad is not None and len(spatial) >= 2 else spatial
    # Parallel and vectorized before decompose_reduction: both need the block's init to be there.
    fused = None
    if outer:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if parallel:
            sch.parallel(fused)
    if inner is not None:
        if not reduction:
            _vectorize(sch, inner)
        elif (_extent(sch, inner) or 0) <= _MAX_WINDOW_LANES:
            # A window's loads are strided (stride-2 pools gather): short rows gain from TVM's
            # vectors, long ones run faster as LLVM vectorizes the plain loop (ResNet50's 56-wide
            # max pool: 3.3 ms as 56-lane gathers, 0.7 ms left to LLVM; AlexNet's 27-wide: 0.09 vs 0.19).
            sch.vectorize(inner)
        if reduction:
            init = sch.decompose_reduction(block, reduction[0])
            _vectorize(sch, sch.get_loops(init)[-1])
    if pad is not None and fused is not None:
        sch.compute_at(pad, fused, preserve_unit_loops=True)
        fill = sch.decompose_padding(pad, sch.get_loops(pad)[1])  # [0] is ``fused``, the outermost loop
        _vectorize(sch, sch.get_loops(fill)[-1])
        _vectorize(sch, sch.get_loops(pad)[-1])


def _vectorize(sch: s_tir.Schedule, loop) -> None:
    """Vectorize ``loop``: whole up to ``_MAX_VECTOR_LANES``, else in ``_SPLIT_LANES`` (a scalar tail)."""
    extent = _extent(sch, loop)
    if extent is None or extent <= 1:
        return
    if extent > _MAX_VECTOR_LANES:
        _, loop = sch.split(loop, factors=[None, _SPLIT_LANES])
    sch.vectorize(loop)


class ParallelizeSpatial(CPUScheduleRule):
    """Last resort, for what ``ScheduleBetweenConvs`` declines: parallel leading spatial loops,
    vectorized innermost spatial loop."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        normalized = _normalized(self, func, target)
        if normalized is None:
            return None
        sch, infos = normalized
        for info in infos:
            loops = sch.get_loops(info.block_rv)
            kinds = info.dom_kind()
            leading = len(kinds) - len(kinds.lstrip("S"))
            if leading == 0 or len(loops) != len(kinds):
                continue
            if leading == len(kinds) and leading >= 2:
                extent = _extent(sch, loops[-1])
                if extent is not None and 1 < extent <= _MAX_VECTOR_LANES:
                    sch.vectorize(loops[-1])
                    leading -= 1
            sch.parallel(sch.fuse(*loops[:leading]) if leading > 1 else loops[0])
        return sch


def ScheduleRemainingOps() -> tvm.transform.Pass:  # noqa: N802 - reads like the pass it returns
    """TVM's CPU GEMV and reduction rules, then ``ScheduleBetweenConvs`` (``ParallelizeSpatial`` for
    what it declines), on unscheduled PrimFuncs."""
    return dlight.ApplyDefaultSchedule(dlight.cpu.GEMV(), dlight.cpu.Reduction(), ScheduleBetweenConvs(),
                                       ParallelizeSpatial())
