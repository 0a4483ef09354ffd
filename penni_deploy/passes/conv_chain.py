"""Read a fused conv chain back out of its composite function, and plan its kernels.

``FuseConvEpilogues`` leaves each chain as a small Relax function with its weights bound inside.
``read_conv_chain`` turns one into plain NumPy facts (``ConvChain``); ``plan_penni_layer`` decides
what the PENNI kernels compute: the (channel, basis) maps some coefficient uses, and the
coefficients as CSR over just those maps. ``LowerConvComposites`` and the per-layer report both use
these, so the report describes exactly what was compiled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
from tvm import relax

from ..errors import UnsupportedModelError
from ..kernels.epilogue import Epilogue
from ..kernels.geometry import ConvGeometry, group_maps_by_channel
from .conv_patterns import DENSE_COMPOSITE, PENNI_COMPOSITE
from .ir_utils import const_value, is_call_to, static_shape


@dataclass(frozen=True, eq=False)
class ConvChain:
    """One fused conv chain. For PENNI layers ``basis_weight`` is the grouped (Cin·d, 1, kh, kw)
    kernel and ``weight`` the (Cout, Cin·d) coefficients; for dense convs ``weight`` is OIHW."""

    kind: str  # PENNI_COMPOSITE or DENSE_COMPOSITE
    geometry: ConvGeometry
    out_shape: tuple[int, int, int, int]
    weight: np.ndarray
    basis_weight: np.ndarray | None
    bias: np.ndarray | None
    epilogue: Epilogue
    input_param: int  # index of the composite's parameter that is the conv input
    residual_param: int | None  # ... and of the residual, when fused

    @property
    def out_channels(self) -> int:
        return self.out_shape[1]

    @property
    def pixels(self) -> int:
        return self.out_shape[2] * self.out_shape[3]


def _geometry(conv: relax.Call, in_shape) -> ConvGeometry:
    a = conv.attrs
    kh, kw = static_shape(conv.args[1])[2:]
    return ConvGeometry(in_shape[0], in_shape[1], in_shape[2], in_shape[3], kh, kw,
                        tuple(int(s) for s in a.strides), tuple(int(p) for p in a.padding),
                        tuple(int(d) for d in a.dilation))


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
    if kind == PENNI_COMPOSITE:
        coefs = const_value(last.args[1])
        return ConvChain(kind, _geometry(first, in_shape), out_shape, coefs.reshape(coefs.shape[0], -1),
                         const_value(first.args[1]), bias, epilogue, params.index(first.args[0]), residual_param)
    if kind == DENSE_COMPOSITE:
        return ConvChain(kind, _geometry(first, in_shape), out_shape, const_value(first.args[1]), None, bias,
                         epilogue, params.index(first.args[0]), residual_param)
    raise UnsupportedModelError(f"internal: unknown composite {kind!r}")


@dataclass(frozen=True, eq=False)
class PenniLayerPlan:
    """What the two PENNI kernels compute for one layer."""

    chain: ConvChain
    num_bases: int  # d of the layer
    map_channels: np.ndarray  # (n_maps,) input channel of each computed map, ascending
    map_weights: np.ndarray  # (n_maps, kh, kw) basis kernel of each map
    channels: np.ndarray  # distinct channels read, and map_ptr into the maps (see group_maps_by_channel)
    map_ptr: np.ndarray
    coefs: scipy.sparse.csr_matrix  # (Cout, n_maps)

    @property
    def n_maps(self) -> int:
        return len(self.map_channels)

    def coef_first(self) -> CoefFirstPlan | None:
        """The coefficient-first form of this layer, or None when its basis kernels are not shared by
        all input channels (that order needs ``B[r]`` independent of the channel)."""
        g = self.chain.geometry
        cin, d = g.in_channels, self.num_bases
        kernels = self.chain.basis_weight.reshape(cin, d, g.kernel_h, g.kernel_w)
        if not np.array_equal(kernels, np.broadcast_to(kernels[:1], kernels.shape)):
            return None
        # A[o·d + r, i] = C[o, i, r]; keep the (o, r) rows some coefficient uses.
        coefs = self.chain.weight.reshape(-1, cin, d).transpose(0, 2, 1).reshape(-1, cin)
        used = np.flatnonzero(np.any(coefs != 0, axis=1))
        csr = scipy.sparse.csr_matrix(coefs[used].astype(np.float32))
        csr.sort_indices()
        counts = np.bincount(used // d, minlength=self.chain.out_channels)
        row_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        return CoefFirstPlan(csr, row_ptr, np.ascontiguousarray(kernels[0][used % d]))


@dataclass(frozen=True, eq=False)
class CoefFirstPlan:
    """Coefficient-first order: ``U = mix @ X`` over the used (o, r) rows, then each output sums the
    convolutions of its rows ``row_ptr[o]:row_ptr[o+1]`` with ``row_weights``."""

    mix: scipy.sparse.csr_matrix  # (n_rows, Cin)
    row_ptr: np.ndarray  # (Cout + 1,) int32
    row_weights: np.ndarray  # (n_rows, kh, kw)

    @property
    def n_rows(self) -> int:
        return self.mix.shape[0]


def plan_penni_layer(chain: ConvChain) -> PenniLayerPlan:
    """Keep only the maps some coefficient uses and store the coefficients as CSR over them."""
    g = chain.geometry
    cin = g.in_channels
    d = chain.basis_weight.shape[0] // cin
    coefs = chain.weight  # (Cout, Cin·d), column i·d + r
    used = np.flatnonzero(np.any(coefs != 0, axis=0))  # ascending, so grouped by channel
    kernels = chain.basis_weight.reshape(cin * d, g.kernel_h, g.kernel_w)
    map_channels = (used // d).astype(np.int32)
    channels, map_ptr = group_maps_by_channel(map_channels)
    csr = scipy.sparse.csr_matrix(coefs[:, used].astype(np.float32))
    csr.sort_indices()
    return PenniLayerPlan(chain, d, map_channels, np.ascontiguousarray(kernels[used]), channels, map_ptr, csr)
