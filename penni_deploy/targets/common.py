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


def pre_schedule_passes(kernels: KernelLibrary, chooser=None) -> list[tvm.transform.Pass]:
    """Kernel lowering, legalization and fusion: the module whose unscheduled PrimFuncs are what
    the schedule step (or MetaSchedule task extraction) sees."""
    from ..passes import LowerConvComposites, LowerLinear

    return [
        LowerConvComposites(kernels, chooser),
        LowerLinear(kernels),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def lowering_passes(kernels: KernelLibrary, schedule: tvm.transform.Pass, chooser=None,
                    metaschedule_dir: str | None = None,
                    after_memory_planning: Sequence[tvm.transform.Pass] = ()) -> list[tvm.transform.Pass]:
    """The shared lowering list.

    Parameters
    ----------
    kernels : KernelLibrary
        Generators for the PENNI and dense conv kernels.
    schedule : tvm.transform.Pass
        Schedules the legalized ops that are not our kernels (pooling, Linear, adds, ...).
    chooser : KernelChooser, optional
        How each layer is computed (``penni_deploy.tuning.chooser``).
    metaschedule_dir : str, optional
        A MetaSchedule database folder: functions it has records for get the tuned schedule
        first; ``schedule`` handles the rest.
    after_memory_planning : sequence of Pass
        Target extras right after static memory planning (e.g. CUDA graph capture).
    """
    if metaschedule_dir:
        schedule = tvm.transform.Sequential([relax.transform.MetaScheduleApplyDatabase(metaschedule_dir), schedule])
    return [
        *pre_schedule_passes(kernels, chooser),
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
