"""Who decides how each layer is computed: the cost model, or a tuning database.

``LowerConvComposites`` asks a chooser two questions per layer: which ``KernelConfig`` for a PENNI
layer, and whether a dense conv runs as our hand kernel or as plain TVM ops (which MetaSchedule
tuned). ``CostModelChooser`` answers without measurements; ``DatabaseChooser`` answers with the
fastest measured option and falls back to the cost model for layers the database has not seen.
Both keep a log of their answers for the artifact's layer report.
"""

from __future__ import annotations

from ..kernels.config import DEFAULT_CONFIG, KernelConfig
from ..plan.layers import ConvChain, PenniLayerPlan
from . import cost_model
from .database import TuningDatabase
from .workload import dense_workload_key, penni_workload_key

HAND_KERNEL = "hand"
TVM_OPS = "metaschedule"
#: A dense conv with mostly-zero weights, run in its exact PENNI form on the sparse kernels.
SPARSE_KERNELS = "sparse"


class FixedChooser:
    """Always the same answer (the library default; the GPU target and tests)."""

    def __init__(self, config: KernelConfig = DEFAULT_CONFIG, dense: str = HAND_KERNEL):
        self.config = config
        self.dense_impl = dense
        self.log: dict[str, dict] = {}

    def penni(self, plan: PenniLayerPlan) -> KernelConfig:
        return self._note(penni_workload_key(plan), self.config, "fixed")

    def dense(self, chain: ConvChain) -> str:
        self.log[dense_workload_key(chain)] = {"impl": self.dense_impl, "source": "fixed"}
        return self.dense_impl

    def _note(self, key: str, config: KernelConfig, source: str) -> KernelConfig:
        self.log[key] = {"config": config.describe(), "source": source}
        return config


class CostModelChooser(FixedChooser):
    """Picks each PENNI layer's config by the analytical cost model; dense convs use our kernel."""

    def __init__(self, lanes: int, threads: int):
        super().__init__()
        self.machine = cost_model.Machine(lanes, threads)

    def penni(self, plan: PenniLayerPlan) -> KernelConfig:
        return self._note(penni_workload_key(plan), cost_model.choose(plan, self.machine), "cost model")

    def dense(self, chain: ConvChain) -> str:
        impl = SPARSE_KERNELS if cost_model.sparse_dense_wins(chain, self.machine) else HAND_KERNEL
        self.log[dense_workload_key(chain)] = {"impl": impl, "source": "cost model"}
        return impl


class DatabaseChooser(CostModelChooser):
    """The fastest measured option per layer for ``target_key``; the cost model elsewhere."""

    def __init__(self, database: TuningDatabase, target_key: str, lanes: int, threads: int):
        super().__init__(lanes, threads)
        self.database = database
        self.target_key = target_key

    def penni(self, plan: PenniLayerPlan) -> KernelConfig:
        key = penni_workload_key(plan)
        record = self.database.best(self.target_key, key)
        if record is None:
            return super().penni(plan)
        self.log[key] = {"config": KernelConfig.from_json(record.config).describe(), "source": "tuned",
                         "ms": record.ms}
        return KernelConfig.from_json(record.config)

    def dense(self, chain: ConvChain) -> str:
        key = dense_workload_key(chain)
        record = self.database.best(self.target_key, key)
        if record is None and cost_model.sparse_dense_wins(chain, self.machine):
            self.log[key] = {"impl": SPARSE_KERNELS, "source": "cost model"}
            return SPARSE_KERNELS
        impl = record.config.get("impl", HAND_KERNEL) if record else HAND_KERNEL
        self.log[key] = {"impl": impl, "source": "tuned" if record else "default",
                         **({"ms": record.ms} if record else {})}
        return impl
