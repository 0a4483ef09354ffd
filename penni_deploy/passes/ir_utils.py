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
            and str(a.out_dtype) in ("float32", "") and call.ty.dtype == "float32")
