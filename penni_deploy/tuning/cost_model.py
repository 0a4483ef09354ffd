"""An analytical cost model of the PENNI kernel configs, for builds without a tuning database.

Costs are in vector operations (one FMA or load/store of ``lanes`` floats) and are relative: they
only have to rank the configs of one layer. The terms follow what the kernels do:

- basis-first: ``n_maps·k²`` FMAs per output pixel vector for the maps, ``nnz`` for the
  recombination, plus writing and re-reading the map tensor (cheap while it fits in L2, which the
  fused kernel guarantees by tiling);
- coefficient-first: ``nnz`` FMAs per *input* pixel vector for the mix (4× the output pixels after a
  stride-2 layer), then ``n_rows·k²`` per output pixel vector plus one zero-padded copy of each row;
- per nonzero and pixel block, loop and index overhead that ELL and unrolled code mostly remove,
  and that wider pixel blocks amortize;
- idle threads when a kernel has fewer tasks than threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..kernels.config import KernelConfig
from ..kernels.cpu.basis_narrow import is_narrow
from ..plan.layers import ConvChain, PenniLayerPlan, dense_as_penni, plan_penni_layer

#: Map bytes that stay cheap to write and re-read (roughly a core's L2).
_CACHE_BYTES = 1 << 20
#: Per-nonzero, per-pixel-block overhead (loop, index load, address math), in vector ops.
_INDEX_OVERHEAD = {"csr": 1.5, "ell": 1.0, "unrolled": 0.25}
#: Extra vector ops per vector of an intermediate written and read back: in cache, and spilled.
_TRAFFIC = 0.5
_SPILL = 1.0
#: Fixed cost of one parallel kernel launch (thread wake-up and join), in vector ops.
_LAUNCH = 12000
#: A dense conv runs on the sparse kernels when their estimate is below this share of the GEMM's
#: FMAs. The GEMM runs near the FMA peak, the sparse estimate is optimistic for 1×1 layers: measured
#: (one core), a 256→256 1×1 at 28×28 is faster sparse up to ~40% density, a 64→64 3×3 up to ~45%.
_SPARSE_MARGIN = 0.6
#: Above this density no sparse form can win; skip building its plan.
_MAX_SPARSE_DENSITY = 0.6


@dataclass(frozen=True)
class Machine:
    """What the cost model knows of the machine."""

    lanes: int
    threads: int


def _vectors(pixels: int, lanes: int) -> int:
    return math.ceil(pixels / lanes)


def _parallel(cost: float, tasks: int, threads: int) -> float:
    """Wall cost of ``cost`` work split over ``tasks`` equal tasks on ``threads`` threads."""
    rounds = math.ceil(tasks / threads)
    return cost / max(1, tasks) * rounds


def _recombine(nnz: int, rows: int, width: int, pixels: int, cfg: KernelConfig, m: Machine) -> float:
    vectors = _vectors(pixels, m.lanes)
    blocks = math.ceil(pixels / (cfg.block * m.lanes))
    stored = rows * width if cfg.format == "ell" else nnz
    return stored * vectors + stored * blocks * _INDEX_OVERHEAD[cfg.format] + rows * vectors


def estimate(plan: PenniLayerPlan, cfg: KernelConfig, m: Machine) -> float:
    """Relative cost of running ``plan`` with ``cfg`` (lower is faster)."""
    chain = plan.chain
    g = chain.geometry
    k2 = g.kernel_h * g.kernel_w
    n, cout = g.batch, chain.out_channels
    p_out, p_in = chain.pixels, g.height * g.width
    csr = plan.coefs
    width = int(max(1, (csr.indptr[1:] - csr.indptr[:-1]).max(initial=0)))
    if cfg.order == "coef_first":
        cf = plan.coef_first()
        if cf is None:
            return math.inf
        cf_width = int(max(1, (cf.mix.indptr[1:] - cf.mix.indptr[:-1]).max(initial=0)))
        mix = n * _recombine(cf.mix.nnz, cf.n_rows, cf_width, p_in, cfg, m)
        pad = cf.n_rows * g.window_height * _vectors(g.window_width, m.lanes)
        conv = cf.n_rows * (k2 * _vectors(p_out, m.lanes)) + pad + cout * _vectors(p_out, m.lanes)
        return (_parallel(mix, n * cf.n_rows, m.threads) + _parallel(n * conv + _traffic(cf.n_rows, p_in, n, m),
                                                                        n * cout, m.threads) + 2 * _LAUNCH)
    maps = plan.n_maps * k2 * _vectors(p_out, m.lanes)
    if is_narrow(g, m.lanes):  # one flat copy per channel, no padded rows (kernels/cpu/basis_narrow.py)
        pad = len(plan.channels) * _vectors(p_in, m.lanes)
    else:
        pad = len(plan.channels) * g.window_height * _vectors(g.window_width, m.lanes)
    recombine = _recombine(csr.nnz, cout, width, p_out, cfg, m)
    if cfg.fused:
        rows = _fused_rows(g.out_height, cfg.tile_rows)
        tiles = g.out_height // rows
        tile_pixels = rows * g.out_width
        # every tile re-pads the (overlapping) input rows it reads
        in_rows = (rows - 1) * g.stride[0] + (g.kernel_h - 1) * g.dilation[0] + 1
        pad = len(plan.channels) * tiles * in_rows * _vectors(g.window_width, m.lanes)
        recombine = tiles * _recombine(csr.nnz, cout, width, tile_pixels, cfg, m)
        return _parallel(n * (maps + pad + recombine), n * tiles, m.threads) + _LAUNCH
    return (_parallel(n * (maps + pad) + _traffic(plan.n_maps, p_out, n, m), n * len(plan.channels), m.threads)
            + _parallel(n * recombine, n * cout, m.threads) + 2 * _LAUNCH)


def _traffic(rows: int, pixels: int, batch: int, m: Machine) -> float:
    """Writing an intermediate of ``rows × pixels`` and reading it back."""
    per_vector = _SPILL if rows * pixels * 4 * batch > _CACHE_BYTES else _TRAFFIC
    return per_vector * 2 * rows * _vectors(pixels, m.lanes) * batch


def _fused_rows(out_height: int, preferred: int) -> int:
    from ..kernels.cpu.fused_layer import fused_tile_rows

    return fused_tile_rows(out_height, preferred)


def dense_cost(chain: ConvChain, m: Machine) -> float:
    """Relative cost of a dense conv on the GEMM kernel: one vector FMA per weight and pixel vector."""
    g = chain.geometry
    fmas = g.batch * chain.out_channels * g.in_channels * g.kernel_h * g.kernel_w * _vectors(chain.pixels, m.lanes)
    return fmas / m.threads + _LAUNCH


def sparse_dense_wins(chain: ConvChain, m: Machine) -> bool:
    """Whether a dense conv whose weights are mostly zero runs faster on the sparse PENNI kernels
    (in its exact one-hot PENNI form, ``plan.layers.dense_as_penni``)."""
    density = float((chain.weight != 0).mean()) if chain.weight.size else 1.0
    if density > _MAX_SPARSE_DENSITY:
        return False
    plan = plan_penni_layer(dense_as_penni(chain))
    if plan.coefs.nnz == 0:
        return True  # all-zero weights: the epilogue alone
    from .space import default_candidates

    best = rank(plan, default_candidates(plan), m)[0][0]
    return best < _SPARSE_MARGIN * dense_cost(chain, m)


def rank(plan: PenniLayerPlan, configs: list[KernelConfig], m: Machine) -> list[tuple[float, KernelConfig]]:
    """``configs`` with their estimates, cheapest first (ties keep the given order)."""
    scored = [(estimate(plan, c, m), i, c) for i, c in enumerate(configs)]
    return [(cost, c) for cost, _, c in sorted(scored, key=lambda t: (t[0], t[1])) if math.isfinite(cost)]


def choose(plan: PenniLayerPlan, m: Machine) -> KernelConfig:
    """The config the cost model expects to be fastest, among the ones untuned builds use."""
    from .space import default_candidates

    return rank(plan, default_candidates(plan), m)[0][1]
