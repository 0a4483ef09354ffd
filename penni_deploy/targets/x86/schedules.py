"""Schedules for the ops TVM legalizes itself (pooling, Linear, adds, pads, ...) on x86.

TVM 0.27 has CPU rules for GEMV and reductions only; anything else would run as naive,
single-threaded loops. ``ScheduleRemainingOps`` applies TVM's CPU rules where they fit and
otherwise, per block, runs the leading spatial loops in parallel and vectorizes a short innermost
spatial loop. Our generated kernels are marked ``tir.is_scheduled`` and left alone.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

_MAX_VECTOR_LANES = 64


class ParallelizeSpatial(CPUScheduleRule):
    """Fallback rule: parallel leading spatial loops, vectorized innermost spatial loop."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        for info in infos:
            loops = sch.get_loops(info.block_rv)
            kinds = info.dom_kind()
            leading = len(kinds) - len(kinds.lstrip("S"))
            if leading == 0 or len(loops) != len(kinds):
                continue
            if leading == len(kinds) and leading >= 2:
                extent = sch.get(loops[-1]).extent
                if isinstance(extent, tirx.IntImm) and 1 < int(extent) <= _MAX_VECTOR_LANES:
                    sch.vectorize(loops[-1])
                    leading -= 1
            outer = sch.fuse(*loops[:leading]) if leading > 1 else loops[0]
            sch.parallel(outer)
        return sch


def ScheduleRemainingOps() -> tvm.transform.Pass:  # noqa: N802 - reads like the pass it returns
    """TVM's CPU GEMV and reduction rules, then ``ParallelizeSpatial``, on unscheduled PrimFuncs."""
    return dlight.ApplyDefaultSchedule(dlight.cpu.GEMV(), dlight.cpu.Reduction(), ParallelizeSpatial())
