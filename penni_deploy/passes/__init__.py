"""Graph passes of penni-deploy, in the order the pipeline runs them (see ``pipeline.py``)."""

from .factor_low_rank_conv import FactorLowRankConv
from .fold_batch_norm import FoldBatchNorm
from .fold_weight_expressions import FoldWeightExpressions
from .fuse_conv_epilogues import FuseConvEpilogues
from .lower_conv_composites import LowerConvComposites
from .lower_linear import LowerLinear

__all__ = [
    "FactorLowRankConv",
    "FoldBatchNorm",
    "FoldWeightExpressions",
    "FuseConvEpilogues",
    "LowerConvComposites",
    "LowerLinear",
]

from .pipeline import PIPELINES, PipelineOptions, graph_passes, run_passes

__all__ += ["PIPELINES", "PipelineOptions", "graph_passes", "run_passes"]
