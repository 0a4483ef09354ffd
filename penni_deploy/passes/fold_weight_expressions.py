"""FoldWeightExpressions: evaluate, in NumPy, the graph ops that only shape or scale constant weights.

After import a PENNI layer's grouped weight is ``tile(reshape(basis))``, its coefficient matrix a
``reshape``, a Linear weight a ``permute_dims`` and a conv bias a ``reshape``. Every later pass needs
those as constants. TVM's ``FoldConstant`` does the same but compiles a kernel per expression
(about 0.1 s each, 20 s on ResNet56), so the few ops that appear on weights are evaluated here
directly. If any other op on constants remains, TVM's ``FoldConstant`` finishes the job, so the
result is complete either way. Run first.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .ir_utils import bound_value, const_value, mutate_relax_functions, static_shape

logger = logging.getLogger(__name__)


def _same_shape_as_output(value, call):  # reshape, expand_dims, squeeze: only the shape changes
    return value.reshape(static_shape(call))


def _permute(value, call):
    axes = call.attrs.axes
    return np.transpose(value, None if axes is None else [int(a) for a in axes])


#: Relax op name -> NumPy evaluation of (first constant argument(s), call).
_UNARY = {
    "relax.reshape": _same_shape_as_output,
    "relax.expand_dims": _same_shape_as_output,
    "relax.squeeze": _same_shape_as_output,
    "relax.broadcast_to": lambda v, call: np.broadcast_to(v, static_shape(call)),
    "relax.tile": lambda v, call: np.tile(v, [int(r) for r in call.attrs.repeats]),
    "relax.permute_dims": _permute,
    "relax.sqrt": lambda v, _call: np.sqrt(v),
    "relax.rsqrt": lambda v, _call: 1.0 / np.sqrt(v),
    "relax.negative": lambda v, _call: -v,
    "relax.astype": lambda v, call: v.astype(str(call.ty.dtype)),
}
_BINARY = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.divide": np.divide,
    "relax.matmul": np.matmul,  # reference-style layers: W = C @ B
}


@mutator
class _WeightFolder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.folded = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or static_shape(call) is None:
            return call
        name = call.op.name
        values = [const_value(bound_value(self, arg)) for arg in call.args]
        if name in _UNARY and values and values[0] is not None:
            result = _UNARY[name](values[0], call)
        elif name in _BINARY and len(values) == 2 and all(v is not None for v in values):
            result = _BINARY[name](values[0], values[1])
        else:
            return call
        self.folded += 1
        return relax.const(np.ascontiguousarray(result).astype(str(call.ty.dtype)))



@tvm.transform.module_pass(opt_level=0, name="FoldWeightExpressions")
class FoldWeightExpressions:
    """Fold reshape/tile/permute/elementwise expressions over constants into constants (NumPy)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        folder = _WeightFolder(mod)
        new_mod = mutate_relax_functions(mod, folder)
        if folder.folded:
            logger.info("FoldWeightExpressions: folded %d expressions", folder.folded)
            # Inline the new constants into their uses, then drop the dead bindings.
            mod = relax.transform.CanonicalizeBindings()(new_mod)
            mod = relax.transform.DeadCodeElimination()(mod)
        leftovers = _ops_on_constants(mod)
        if leftovers:
            logger.info("FoldWeightExpressions: %s left to TVM's FoldConstant", ", ".join(sorted(leftovers)))
            mod = relax.transform.FoldConstant()(mod)
        return mod


def _ops_on_constants(mod: tvm.IRModule) -> set[str]:
    """Names of the Relax ops in ``mod`` whose arguments are all constants."""
    found: set[str] = set()

    def visit(expr):
        if (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.args
                and all(const_value(a) is not None or isinstance(a, relax.ShapeExpr) for a in expr.args)
                and any(const_value(a) is not None for a in expr.args)):
            found.add(expr.op.name)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found
