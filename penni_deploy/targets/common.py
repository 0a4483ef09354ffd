"""The lowering stages every target shares; a target adds only its kernels and schedules.

From a graph where PENNI layers and dense convs are composites to a module ready for
``tvm.compile``: lower the composites to the target's kernels, legalize and fuse what is left,
schedule it, then lower to the Relax VM.
"""

from __future__ import annotations

from collections.abc import Sequence

import tvm
from tvm import relax

from ..kernels.library import KernelLibrary


def lowering_passes(kernels: KernelLibrary, schedule: tvm.transform.Pass,
                    after_memory_planning: Sequence[tvm.transform.Pass] = ()) -> list[tvm.transform.Pass]:
    """The shared lowering list.

    Parameters
    ----------
    kernels : KernelLibrary
        Generators for the PENNI and dense conv kernels.
    schedule : tvm.transform.Pass
        Schedules the legalized ops that are not our kernels (pooling, Linear, adds, ...).
    after_memory_planning : sequence of Pass
        Target extras right after static memory planning (e.g. CUDA graph capture).
    """
    from ..passes import LowerConvComposites

    return [
        LowerConvComposites(kernels),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        schedule,
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
        *after_memory_planning,
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]
