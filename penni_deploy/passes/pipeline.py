"""Named graph pipelines: the order of the graph passes is data, kept here and nowhere else.

Each pipeline is a plain list of passes, built when asked for. The target's own lowering
(kernels, legalization, schedules) follows; see ``penni_deploy.targets``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import tvm

from ..errors import PenniError
from .factor_low_rank_conv import DEFAULT_MAX_BASES, DEFAULT_RTOL, FactorLowRankConv
from .fold_batch_norm import FoldBatchNorm
from .fold_weight_expressions import FoldWeightExpressions
from .fuse_conv_epilogues import FuseConvEpilogues

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineOptions:
    """Knobs of the graph pipelines.

    Parameters
    ----------
    max_bases : int
        Largest d that ``FactorLowRankConv`` accepts.
    rtol : float
        Reconstruction tolerance of that factorization, relative to the largest kernel entry.
    """

    max_bases: int = DEFAULT_MAX_BASES
    rtol: float = DEFAULT_RTOL


def _penni(opts: PipelineOptions) -> list[tvm.transform.Pass]:
    return [
        FoldWeightExpressions(),
        FoldBatchNorm(),
        FactorLowRankConv(opts.max_bases, opts.rtol),
        FuseConvEpilogues(penni=True),
    ]


def _dense(_opts: PipelineOptions) -> list[tvm.transform.Pass]:
    return [
        FoldWeightExpressions(),
        FoldBatchNorm(),
        FuseConvEpilogues(penni=False),
    ]


#: Pipeline name -> builder. "penni" is the compiler; "dense" is TVM without the PENNI passes.
PIPELINES: dict[str, Callable[[PipelineOptions], list[tvm.transform.Pass]]] = {
    "penni": _penni,
    "dense": _dense,
}


def graph_passes(name: str, options: PipelineOptions = PipelineOptions()) -> list[tvm.transform.Pass]:
    """The passes of pipeline ``name``."""
    if name not in PIPELINES:
        raise PenniError(f"unknown pipeline {name!r}; choose one of: {', '.join(PIPELINES)}")
    return PIPELINES[name](options)


def run_passes(mod: tvm.IRModule, passes: list[tvm.transform.Pass]) -> tuple[tvm.IRModule, dict[str, float]]:
    """Run ``passes`` in order; returns the module and seconds per pass. A failure names the pass
    and those that ran before it."""
    timings: dict[str, float] = {}
    for p in passes:
        name = p.info.name
        start = time.perf_counter()
        try:
            mod = p(mod)
        except PenniError as exc:
            raise type(exc)(f"pass {name}: {exc}") from exc
        except Exception as exc:
            done = ", ".join(timings) or "none"
            raise PenniError(f"pass {name} failed (after: {done}): {type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        timings[name] = time.perf_counter() - start
        logger.debug("pass %s took %.3f s", name, timings[name])
    return mod, timings
