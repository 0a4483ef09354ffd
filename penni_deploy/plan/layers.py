"""The layer plan: what each conv layer of a model is, and what its kernels compute, as plain NumPy.

``passes.conv_chain.read_conv_chain`` reads a ``ConvChain`` out of a fused Relax composite;
``plan_penni_layer`` decides what a PENNI layer's kernels compute: the (channel, basis) maps some
coefficient uses, and the coefficients as CSR over just those maps. The kernel generators, the
lowering pass, the tuner and the per-layer report all read these types, so they live below all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from .epilogue import Epilogue
from .geometry import ConvGeometry, group_maps_by_channel
from .quantize import ActivationRange

#: ``ConvChain.kind`` values: the names of the composite functions ``FuseConvEpilogues`` makes.
PENNI_COMPOSITE = "penni_deploy.penni_conv"
DENSE_COMPOSITE = "penni_deploy.dense_conv"


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
    input_range: ActivationRange | None = None  # the calibrated range of the input (int8 builds)
    precision: str | None = None  # "fp32": kept in float32 in a reduced-precision build (--fp32-layers)

    @property
    def out_channels(self) -> int:
        return self.out_shape[1]

    @property
    def pixels(self) -> int:
        return self.out_shape[2] * self.out_shape[3]


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


def dense_as_penni(chain: ConvChain) -> ConvChain:
    """A dense conv chain in PENNI form, exactly: d = kh·kw one-hot basis kernels (basis t picks tap t),
    coefficients = the weights, ``C[o, i·k² + t] = W[o, i, ky, kx]``.

    A conv whose weights are mostly zero (magnitude pruning) then runs on the sparse kernels, and
    ``plan_penni_layer`` computes only the (channel, tap) maps some weight uses.
    """
    g = chain.geometry
    cout, cin = chain.out_channels, g.in_channels
    taps = g.kernel_h * g.kernel_w
    one_hot = np.eye(taps, dtype=np.float32).reshape(taps, 1, g.kernel_h, g.kernel_w)  # (k², 1, kh, kw)
    basis = np.tile(one_hot, (cin, 1, 1, 1))  # (Cin·k², 1, kh, kw): the same taps for every channel
    coefs = np.ascontiguousarray(chain.weight.reshape(cout, cin * taps), dtype=np.float32)  # OIHW flattened
    return ConvChain(PENNI_COMPOSITE, g, chain.out_shape, coefs, basis, chain.bias, chain.epilogue,
                     chain.input_param, chain.residual_param, chain.input_range)


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
