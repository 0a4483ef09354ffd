"""The search space of one PENNI layer's kernels (see ``kernels.config.KernelConfig``)."""

from __future__ import annotations

from ..kernels.config import KernelConfig
from ..kernels.cpu import MAX_UNROLLED_NNZ
from ..plan.layers import PenniLayerPlan

BLOCKS = (1, 2, 4)
TILE_ROWS = (1, 2, 4, 8)


def candidates(plan: PenniLayerPlan) -> list[KernelConfig]:
    """Every config worth measuring for ``plan``: both orders (coefficient-first only with a shared
    basis), two kernels or fused (with its tile heights), the three formats and the pixel blocks."""
    formats = ["csr", "ell"] + (["unrolled"] if plan.coefs.nnz <= MAX_UNROLLED_NNZ else [])
    out_height = plan.chain.out_shape[2]
    configs = []
    for block in BLOCKS:
        for fmt in formats:
            configs.append(KernelConfig(format=fmt, block=block))
            if fmt == "csr":
                configs.append(KernelConfig(format=fmt, block=block, balance=True))
        tiles = sorted({t for t in TILE_ROWS if t <= out_height and out_height % t == 0})
        configs += [KernelConfig(fused=True, block=block, tile_rows=t) for t in tiles]
    if plan.coef_first() is not None:
        configs += [KernelConfig(order="coef_first", format=fmt, block=block) for block in BLOCKS for fmt in formats]
    return configs


def default_candidates(plan: PenniLayerPlan) -> list[KernelConfig]:
    """The few configs an untuned build chooses among by cost model."""
    out_height = plan.chain.out_shape[2]
    configs = [KernelConfig(format="csr", block=4), KernelConfig(format="csr", block=1)]
    configs += [KernelConfig(fused=True, block=b, tile_rows=t) for b, t in ((4, 8), (2, 4), (1, 2))
                if t <= out_height and out_height % t == 0]
    if plan.coef_first() is not None:
        configs.append(KernelConfig(order="coef_first", format="csr", block=4))
    return configs
