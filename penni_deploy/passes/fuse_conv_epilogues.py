"""FuseConvEpilogues: group each conv chain into one composite function, ready for its kernel.

Groups ``basis conv → 1×1 recombination`` (a PENNI layer) and plain dense convs, each with the bias
add, residual add and ReLU that follow it where the graph allows (no intermediate used elsewhere),
into functions tagged ``Composite = penni_deploy.penni_conv`` or ``penni_deploy.dense_conv``, with
their weights bound inside. ``LowerConvComposites`` then replaces each with generated kernels, so
the epilogue costs no extra pass over memory. Run after ``FoldBatchNorm`` and ``FactorLowRankConv``.
"""

from __future__ import annotations

import logging
from collections import Counter

import tvm
from tvm import relax

from .conv_patterns import conv_chain_patterns

logger = logging.getLogger(__name__)


def composite_functions(mod: tvm.IRModule) -> dict[str, relax.Function]:
    """The module's composite functions by global name."""
    return {gv.name_hint: f for gv, f in mod.functions.items()
            if isinstance(f, relax.Function) and f.attrs is not None and "Composite" in f.attrs}


@tvm.transform.module_pass(opt_level=0, name="FuseConvEpilogues")
class FuseConvEpilogues:
    """Group PENNI layers and dense convs with their epilogues into composite functions.

    Parameters
    ----------
    penni : bool
        Recognize PENNI layers; with False only dense convs are grouped (the "TVM without the PENNI
        passes" baseline).
    """

    def __init__(self, penni: bool = True):
        self.penni = penni

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        fused = relax.transform.FuseOpsByPattern(conv_chain_patterns(self.penni), bind_constants=True)(mod)
        kinds = Counter(str(f.attrs["Composite"]) for f in composite_functions(fused).values())
        logger.info("FuseConvEpilogues: %s", dict(kinds) or "no conv chains")
        return fused
