"""The x86 lowering pipeline, as one ordered list."""

from __future__ import annotations

import tvm
from tvm import relax


def cpu_lowering_passes(target) -> list[tvm.transform.Pass]:
    from ...passes import LowerConvComposites
    from .schedules import ScheduleRemainingOps

    return [
        LowerConvComposites(target.kernel_params),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        ScheduleRemainingOps(),
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]
