"""Small read-only helpers over Relax expressions, shared by the passes."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import GenericConst


def const_value(expr: relax.Expr) -> np.ndarray | None:
    """The NumPy value of a Relax constant, or None if ``expr`` is not one."""
    if isinstance(expr, GenericConst):
        return expr.value.numpy()
    return None


def static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The static tensor shape of ``expr``, or None when unknown or symbolic."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(dim) for dim in ty.shape)
    except (TypeError, ValueError, tvm.TVMError):
        return None


def is_call_to(expr: relax.Expr, op_name: str) -> bool:
    """Whether ``expr`` is a call of the Relax operator ``op_name`` (e.g. ``relax.nn.conv2d``)."""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name


def conv2d_attrs_ok(call: relax.Call) -> bool:
    """A float32 NCHW/OIHW conv2d, the only layout the kernels handle."""
    a = call.attrs
    return (a.data_layout == "NCHW" and a.kernel_layout == "OIHW" and a.out_layout == "NCHW"
            and (a.out_dtype is None or str(a.out_dtype) in ("float32", "", "void"))
            and str(call.ty.dtype) == "float32")


def per_channel_vector(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as a (C,) vector if it broadcasts per NCHW channel — shape (C,) only when C is also
    the last axis would be ambiguous, so accept (C, 1, 1) and (1, C, 1, 1) — else None."""
    if value.shape in ((channels, 1, 1), (1, channels, 1, 1)):
        return value.reshape(channels)
    return None


def bound_value(mutator, expr: relax.Expr) -> relax.Expr:
    """The value a dataflow variable is bound to (as the mutator has rewritten it), else ``expr``."""
    if isinstance(expr, relax.Var):
        bound = mutator.lookup_binding(expr)
        if bound is not None:
            return bound
    return expr


def mutate_relax_functions(mod: tvm.IRModule, mutator, skip=lambda func: False) -> tvm.IRModule:
    """Run ``mutator`` (a ``PyExprMutator`` built on ``mod``) over every Relax function not ``skip``ped."""
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function) and not skip(func):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
