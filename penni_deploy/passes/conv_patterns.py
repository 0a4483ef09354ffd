"""Patterns of the conv chains ``FuseConvEpilogues`` groups, and the checks that guard them.

A chain is a PENNI layer (basis conv → 1×1 recombination) or a plain dense conv, followed by an
optional per-channel bias add, an optional residual add and an optional ReLU, in that order.
Longer chains come first so the matcher takes the most it can.
"""

from __future__ import annotations

import itertools
import logging

from tvm.relax.backend.utils import has_leaking_intermediate_variables
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.transform import FusionPattern, PatternCheckContext

from ..plan.layers import DENSE_COMPOSITE, PENNI_COMPOSITE
from .ir_utils import const_value, conv2d_attrs_ok, per_channel_vector, static_shape

logger = logging.getLogger(__name__)



def _penni_core():
    x = wildcard()
    basis_conv = is_op("relax.nn.conv2d")(x, is_const())
    recombine = is_op("relax.nn.conv2d")(basis_conv, is_const())
    return recombine, {"input": x, "basis_conv": basis_conv, "recombine": recombine}


def _dense_core():
    x = wildcard()
    conv = is_op("relax.nn.conv2d")(x, is_const())
    return conv, {"input": x, "conv": conv}


def _with_epilogue(core, annotations, bias: bool, residual: bool, relu: bool):
    out = core
    if bias:
        out = is_op("relax.add")(out, is_const())
        annotations["bias_add"] = out
    if residual:
        other = wildcard()
        out = is_op("relax.add")(out, other) | is_op("relax.add")(other, out)
        annotations["residual_add"] = out
    if relu:
        out = is_op("relax.nn.relu")(out)
    return out, annotations


def _check_penni(ctx: PatternCheckContext) -> bool:
    basis_conv = ctx.annotated_expr["basis_conv"]
    recombine = ctx.annotated_expr["recombine"]
    in_shape = static_shape(ctx.annotated_expr["input"])
    if in_shape is None or len(in_shape) != 4:
        return False  # kernels are generated for static NCHW shapes only
    if not (conv2d_attrs_ok(basis_conv) and conv2d_attrs_ok(recombine)):
        return False
    cin = in_shape[1]
    maps, per_group, _, _ = static_shape(basis_conv.args[1])
    if basis_conv.attrs.groups != cin or per_group != 1 or maps % cin:
        return False  # not a per-channel basis convolution
    r = recombine.attrs
    if (r.groups != 1 or static_shape(recombine.args[1])[2:] != (1, 1) or tuple(r.strides) != (1, 1)
            or any(int(p) for p in r.padding) or tuple(r.dilation) != (1, 1)):
        return False  # the recombination must be a plain 1×1 conv
    return _check_epilogue(ctx, static_shape(recombine)[1])


def _check_dense(ctx: PatternCheckContext) -> bool:
    conv = ctx.annotated_expr["conv"]
    in_shape = static_shape(ctx.annotated_expr["input"])
    if in_shape is None or len(in_shape) != 4 or not conv2d_attrs_ok(conv) or conv.attrs.groups != 1:
        return False
    return _check_epilogue(ctx, static_shape(conv)[1])


def _check_epilogue(ctx: PatternCheckContext, out_channels: int) -> bool:
    if has_leaking_intermediate_variables(ctx):
        return False  # an intermediate result is needed elsewhere: fusing would recompute or lose it
    bias_add = ctx.annotated_expr.get("bias_add")
    if bias_add is not None:
        # The matcher treats add as commutative, so the constant may be either operand.
        bias = next(const_value(x) for x in bias_add.args if const_value(x) is not None)
        if per_channel_vector(bias, out_channels) is None:
            return False  # only a per-output-channel bias fuses
    residual_add = ctx.annotated_expr.get("residual_add")
    if residual_add is not None:
        a, b = residual_add.args
        if static_shape(a) != static_shape(b):
            return False  # broadcasting adds are not residuals
        if any(const_value(x) is not None for x in (a, b)):
            return False  # a constant of the output's shape is not a residual stream
        inside = [x for x in (a, b) if x in ctx.matched_bindings]
        if len(inside) != 1 or a.same_as(b):
            return False  # the residual must come from outside the chain (not y + y)
    return True


def conv_chain_patterns(penni: bool = True) -> list[FusionPattern]:
    """Conv chain patterns, PENNI first (unless ``penni`` is False), longest first within each kind."""
    kinds = [(DENSE_COMPOSITE, _dense_core, _check_dense)]
    if penni:
        kinds.insert(0, (PENNI_COMPOSITE, _penni_core, _check_penni))
    patterns = []
    for name, core_fn, check in kinds:
        options = sorted(itertools.product((True, False), repeat=3), key=lambda o: -sum(o))
        for bias, residual, relu in options:
            core, annotations = core_fn()
            pattern, annotations = _with_epilogue(core, annotations, bias, residual, relu)
            patterns.append(FusionPattern(name, pattern, annotations, check))
    return patterns
