"""What a tuning result is keyed by: the layer's workload and the machine kind.

A PENNI layer's best kernel config depends on its shapes, epilogue and sparsity *pattern*, not on
the coefficient values, so two layers (or two models, or a retrained model) with the same pattern
share results. The target key names the machine kind (CPU model, ISA, threads): a database copied
to another machine of the same kind applies there unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from ..plan.layers import ConvChain, PenniLayerPlan


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def chain_facts(chain: ConvChain) -> dict:
    """Shapes and epilogue of a conv chain, JSON-able."""
    return {"kind": chain.kind, "geometry": dataclasses.asdict(chain.geometry), "out_shape": list(chain.out_shape),
            "epilogue": dataclasses.asdict(chain.epilogue)}


def penni_workload_key(plan: PenniLayerPlan) -> str:
    """Key of a PENNI layer: shapes, epilogue, used maps and the coefficient sparsity pattern."""
    facts = chain_facts(plan.chain)
    facts["pattern"] = _digest(plan.map_channels, plan.coefs.indptr, plan.coefs.indices)
    facts["shared_basis"] = plan.coef_first() is not None
    return "penni-" + hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def dense_workload_key(chain: ConvChain) -> str:
    """Key of a dense conv chain: shapes and epilogue only."""
    facts = chain_facts(chain)
    return "dense-" + hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def describe_layer(chain: ConvChain, plan: PenniLayerPlan | None = None) -> str:
    """Human-readable layer summary for progress lines and the database."""
    g = chain.geometry
    text = (f"{g.in_channels}→{chain.out_channels} {g.kernel_h}x{g.kernel_w}/s{g.stride[0]} "
            f"{g.height}x{g.width} n{g.batch}")
    if plan is not None:
        density = plan.coefs.nnz / max(1, chain.out_channels * g.in_channels * plan.num_bases)
        text += f" {density:.1%} nnz={plan.coefs.nnz}"
    return text
