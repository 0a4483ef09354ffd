"""FoldBatchNorm: fold inference-mode BatchNorm into the convolution before it.

``conv2d(x, W) [+ b] → batch_norm(γ, β, μ, σ²)`` becomes ``conv2d(x, W·s) + (b·s + t)`` with
``s = γ/√(σ²+ε)`` and ``t = β − μ·s`` per output channel, computed in NumPy (TVM's own
``FoldBatchnormToConv2D`` + ``FoldConstant`` give the same result but compile a kernel per constant
expression: most of a compile's time). Scaling the rows of a PENNI kernel matrix keeps its rank, so
this runs before ``FactorLowRankConv`` and ``FuseConvEpilogues``, which then see one conv plus a bias.
BatchNorms not fed by a conv with constant weights (e.g. after a Linear) are left for legalization.
Run after ``FoldWeightExpressions``.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .ir_utils import (
    bound_value,
    const_value,
    conv2d_attrs_ok,
    is_call_to,
    mutate_relax_functions,
    per_channel_vector,
)

logger = logging.getLogger(__name__)


@mutator
class _BatchNormFolder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.folded = 0

    def visit_tuple_getitem_(self, op: relax.TupleGetItem) -> relax.Expr:
        op = super().visit_tuple_getitem_(op)
        if op.index != 0:
            return op
        bn = bound_value(self, op.tuple_value)
        if not is_call_to(bn, "relax.nn.batch_norm") or int(bn.attrs.axis) != 1:
            return op  # only channel-axis BN on NCHW convs folds
        if bn.attrs.training:
            return op  # training-mode BN uses batch statistics, not the stored ones
        stats = [const_value(a) for a in bn.args[1:]]
        if any(s is None for s in stats):
            return op  # statistics must be known at compile time
        gamma, beta, mean, var = (s.astype(np.float64) for s in stats)
        if not bn.attrs.scale:
            gamma = np.ones_like(gamma)
        if not bn.attrs.center:
            beta = np.zeros_like(beta)
        channels = gamma.shape[0]
        producer, bias = bound_value(self, bn.args[0]), None
        if is_call_to(producer, "relax.add") and const_value(producer.args[1]) is not None:
            bias = per_channel_vector(const_value(producer.args[1]), channels)
            if bias is None:
                return op  # only a per-output-channel bias folds into the conv
            bias = bias.astype(np.float64)
            producer = bound_value(self, producer.args[0])
        if not is_call_to(producer, "relax.nn.conv2d") or not conv2d_attrs_ok(producer):
            return op
        weight = const_value(producer.args[1])
        if weight is None:
            return op
        scale = gamma / np.sqrt(var + float(bn.attrs.epsilon))  # (Cout,)
        shift = beta - mean * scale  # (Cout,)
        if bias is not None:
            shift = shift + bias * scale
        # weight (Cout, Cin/groups, kh, kw) scaled per output channel.
        new_weight = (weight.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
        a = producer.attrs
        conv = self.builder_.emit(relax.op.nn.conv2d(
            producer.args[0], relax.const(new_weight), strides=a.strides, padding=a.padding, dilation=a.dilation,
            groups=a.groups, data_layout=a.data_layout, kernel_layout=a.kernel_layout, out_layout=a.out_layout,
            out_dtype=a.out_dtype))
        self.folded += 1
        return relax.op.add(conv, relax.const(shift.reshape(1, -1, 1, 1).astype(np.float32)))



@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
class FoldBatchNorm:
    """Fold BatchNorm that follows a conv2d (optionally with bias) into the conv and a bias add."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        folder = _BatchNormFolder(mod)
        new_mod = mutate_relax_functions(mod, folder)
        if folder.folded == 0:
            return mod
        logger.info("FoldBatchNorm: folded %d BatchNorm ops", folder.folded)
        return relax.transform.DeadCodeElimination()(new_mod)
