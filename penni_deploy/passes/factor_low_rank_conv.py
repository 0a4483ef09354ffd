"""FactorLowRankConv: rewrite a dense k×k conv whose kernel has rank ≤ d into PENNI's two-stage form.

Models trained with the reference PENNI code (and many exported ones) compute ``W = C·B`` before a
plain conv2d, so the trace shows a dense conv. When the (Cout·Cin)×k² kernel matrix factors exactly
(``low_rank.factor_kernel_matrix``: rank ≤ ``max_bases`` and < k², every entry within ``rtol``),
the conv becomes ``conv2d(conv2d(x, B, groups=Cin), C)``: a basis convolution carrying the stride,
padding and dilation, then a 1×1 recombination — the form ``FuseConvEpilogues`` recognizes. Genuinely
dense convs fail the tolerance and are left alone. Run after ``FoldBatchNorm``.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .ir_utils import (
    const_value,
    conv2d_attrs_ok,
    is_call_to,
    mutate_relax_functions,
)
from .low_rank import factor_kernel_matrix

logger = logging.getLogger(__name__)

DEFAULT_MAX_BASES = 5
DEFAULT_RTOL = 1e-5


@mutator
class _LowRankConvRewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, max_bases: int, rtol: float):
        super().__init__(mod)
        self.max_bases = max_bases
        self.rtol = rtol
        self.rewritten = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not is_call_to(call, "relax.nn.conv2d") or not conv2d_attrs_ok(call):
            return call
        if call.attrs.groups != 1:
            return call  # grouped convs are not PENNI layers
        weight = const_value(call.args[1])
        if weight is None:
            return call  # weights must be known at compile time
        cout, cin, kh, kw = weight.shape
        if kh * kw == 1:
            return call  # 1×1 convs are never decomposed
        if cout * cin <= self.max_bases:
            # Too few kernels to share anything: every such conv is trivially "low rank". This also
            # keeps the pass idempotent (the basis conv it emits for Cin = 1 is never factored again).
            return call
        factors = factor_kernel_matrix(weight.reshape(cout * cin, kh * kw), self.max_bases, self.rtol)
        if factors is None:
            return call  # full rank: a genuinely dense conv
        d = factors.num_bases
        # basis (d, kh·kw) → grouped weight (Cin·d, 1, kh, kw), channel i·d + r uses basis r.
        grouped = np.tile(factors.basis.reshape(d, 1, kh, kw), (cin, 1, 1, 1))
        # coefs (Cout·Cin, d) → (Cout, Cin·d, 1, 1), column i·d + r.
        pointwise = factors.coefs.reshape(cout, cin * d, 1, 1)
        a = call.attrs
        maps = relax.op.nn.conv2d(call.args[0], relax.const(grouped), strides=a.strides, padding=a.padding,
                                  dilation=a.dilation, groups=cin, out_dtype="float32")
        maps = self.builder_.emit(maps)
        self.rewritten += 1
        return relax.op.nn.conv2d(maps, relax.const(np.ascontiguousarray(pointwise)), out_dtype="float32")


@tvm.transform.module_pass(opt_level=0, name="FactorLowRankConv")
class FactorLowRankConv:
    """Rewrite dense convs with low-rank kernels into basis conv + 1×1 recombination.

    Parameters
    ----------
    max_bases : int
        Largest number of bases accepted (PENNI's d, 5 by default).
    rtol : float
        Largest reconstruction error accepted, relative to the largest kernel entry.
    """

    def __init__(self, max_bases: int = DEFAULT_MAX_BASES, rtol: float = DEFAULT_RTOL):
        self.max_bases = max_bases
        self.rtol = rtol

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _LowRankConvRewriter(mod, self.max_bases, self.rtol)
        new_mod = mutate_relax_functions(mod, rewriter)
        if rewriter.rewritten == 0:
            return mod
        logger.info("FactorLowRankConv: factored %d dense convs into basis + coefficients", rewriter.rewritten)
        return new_mod
