"""Read a fused conv chain back out of its composite function (``plan.layers.ConvChain``).

``FuseConvEpilogues`` leaves each chain as a small Relax function with its weights bound inside.
``read_conv_chain`` turns one into plain NumPy facts that ``LowerConvComposites``, the tuner and the
per-layer report share, so the report describes exactly what was compiled.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..errors import UnsupportedModelError
from ..plan.epilogue import Epilogue
from ..plan.geometry import ConvGeometry
from ..plan.quantize import ActivationRange
from ..plan.layers import DENSE_COMPOSITE, PENNI_COMPOSITE, ConvChain, PenniLayerPlan, plan_penni_layer
from .ir_utils import const_value, is_call_to, static_shape

__all__ = ["ConvChain", "PenniLayerPlan", "plan_penni_layer", "read_conv_chain"]


def _geometry(conv: relax.Call, in_shape) -> ConvGeometry:
    a = conv.attrs
    kh, kw = static_shape(conv.args[1])[2:]
    return ConvGeometry(in_shape[0], in_shape[1], in_shape[2], in_shape[3], kh, kw,
                        tuple(int(s) for s in a.strides), tuple(int(p) for p in a.padding),
                        tuple(int(d) for d in a.dilation))


#: Composite attribute holding the calibrated input range, ``"low high"`` (``calibration.py`` sets it).
INPUT_RANGE_ATTR = "penni_deploy.input_range"


def with_input_range(func: relax.Function, rng: ActivationRange) -> relax.Function:
    """``func`` (a conv composite) carrying the calibrated range of its input."""
    return func.with_attr(INPUT_RANGE_ATTR, f"{rng.low!r} {rng.high!r}")


#: Composite attribute naming a precision the layer is kept in against the build's (``--fp32-layers``).
PRECISION_ATTR = "penni_deploy.precision"


def with_precision(func: relax.Function, precision: str) -> relax.Function:
    """``func`` (a conv composite) kept in ``precision`` whatever the build's precision."""
    return func.with_attr(PRECISION_ATTR, precision)


def read_input_range(func: relax.Function) -> ActivationRange | None:
    if func.attrs is None or INPUT_RANGE_ATTR not in func.attrs:
        return None
    low, high = str(func.attrs[INPUT_RANGE_ATTR]).split()
    return ActivationRange(float(low), float(high))


def read_conv_chain(func: relax.Function) -> ConvChain:
    """Extract a ``ConvChain`` from a composite function made by ``FuseConvEpilogues``."""
    kind = str(func.attrs["Composite"])
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    params = list(func.params)
    convs = [v for v in bindings.values() if is_call_to(v, "relax.nn.conv2d")]
    first, last = convs[0], convs[-1]
    in_shape = static_shape(first.args[0])
    chain_vars = {var for var, value in bindings.items() if value is last}
    bias = None
    residual_param = None
    epilogue = Epilogue()
    for var, value in bindings.items():
        if is_call_to(value, "relax.add"):
            a, b = value.args
            inner, other = (a, b) if a in chain_vars else (b, a)
            if const_value(other) is not None:
                bias = const_value(other).reshape(-1).astype(np.float32)
                epilogue = Epilogue(True, epilogue.residual, epilogue.relu)
            else:
                residual_param = params.index(other)
                epilogue = Epilogue(epilogue.bias, True, epilogue.relu)
        elif is_call_to(value, "relax.nn.relu"):
            epilogue = Epilogue(epilogue.bias, epilogue.residual, True)
        if var is not None and any(arg in chain_vars for arg in getattr(value, "args", ())):
            chain_vars.add(var)
    out_shape = static_shape(func.body.body) if static_shape(func.body.body) else static_shape(last)
    input_range = read_input_range(func)
    precision = str(func.attrs[PRECISION_ATTR]) if PRECISION_ATTR in func.attrs else None
    if kind == PENNI_COMPOSITE:
        coefs = const_value(last.args[1])
        return ConvChain(kind, _geometry(first, in_shape), out_shape, coefs.reshape(coefs.shape[0], -1),
                         const_value(first.args[1]), bias, epilogue, params.index(first.args[0]), residual_param,
                         input_range, precision)
    if kind == DENSE_COMPOSITE:
        return ConvChain(kind, _geometry(first, in_shape), out_shape, const_value(first.args[1]), None, bias,
                         epilogue, params.index(first.args[0]), residual_param, input_range, precision)
    raise UnsupportedModelError(f"internal: unknown composite {kind!r}")
