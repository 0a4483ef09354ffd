"""FoldBatchNorm: fold inference-mode BatchNorm into the convolution before it.

``conv2d(x, W) → batch_norm`` becomes ``conv2d(x, W·s) + t`` with ``s = γ/√(σ²+ε)`` and
``t = β − μ·s`` (per output channel), then constants are folded. Scaling the rows of a PENNI kernel
matrix keeps its rank, so this must run before ``FactorLowRankConv`` and ``FuseConvEpilogues``,
which then see one conv plus a bias. BatchNorms not fed by a conv are left for legalization.
Needs constant conv weights: run ``FoldConstant`` first (a PENNI layer's tiled basis is computed
in the graph until then).
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

from .ir_utils import is_call_to

logger = logging.getLogger(__name__)


def _count_batch_norms(mod: tvm.IRModule) -> int:
    count = 0

    def visit(expr):
        nonlocal count
        count += is_call_to(expr, "relax.nn.batch_norm")

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return count


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
class FoldBatchNorm:
    """Fold BatchNorm that follows a conv2d into the conv's weight and a bias add."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        before = _count_batch_norms(mod)
        if before == 0:
            return mod
        mod = relax.transform.FoldBatchnormToConv2D()(mod)
        mod = relax.transform.FoldConstant()(mod)
        logger.info("FoldBatchNorm: folded %d of %d BatchNorm ops", before - _count_batch_norms(mod), before)
        return mod
