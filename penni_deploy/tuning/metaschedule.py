"""The dense parts of a model, tuned with TVM's MetaSchedule.

Dense convs (first conv, 1×1 shortcuts) run here as plain Relax ops, so that after legalization
and fusion they, the Linear layer, pooling and the remaining elementwise ops are ordinary TIR
functions MetaSchedule can search. Tasks are extracted from the *whole model* lowered exactly as
``compile --tuning-db`` lowers it, so the records match the functions the build looks up; our own
PENNI kernels are already scheduled and are left out. The records live in the database folder's
``metaschedule/`` (MetaSchedule's JSON database, plain files). Tasks that already hold enough
records are skipped, which is what makes a second run or a resumed run cheap.
"""

from __future__ import annotations

import logging
import os

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from ..plan.layers import ConvChain
from ..targets.common import pre_schedule_passes
from .chooser import TVM_OPS, FixedChooser
from .progress import ProgressBar


class _DenseAsOps(FixedChooser):
    """The cost model for PENNI layers (they are not tuned here), TVM ops for dense convs."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def penni(self, plan):
        return self.inner.penni(plan)

    def dense(self, chain: ConvChain) -> str:
        return TVM_OPS


#: Task names MetaSchedule is worth running on: the compute-heavy dense ops. Pooling, reshapes and
#: elementwise ops keep the fallback schedule (a search there costs minutes and gains microseconds).
DENSE_OPS = ("conv2d", "matmul", "dense", "linear")


def _unscheduled_tasks(mod: tvm.IRModule, target) -> list:
    with target.tvm_target:
        lowered = tvm.transform.Sequential(pre_schedule_passes(target.kernels,
                                                               _DenseAsOps(target.default_chooser())))(mod)
    tasks = ms.relax_integration.extract_tasks(lowered, target.tvm_target)
    keep = []
    for task in tasks:
        func = task.dispatched[0]["main"] if task.dispatched else None
        attrs = func.attrs if func is not None else None
        if attrs is not None and ("tirx.is_scheduled" in attrs or "tir.is_scheduled" in attrs):
            continue  # our generated kernels
        if any(op in task.task_name for op in DENSE_OPS):
            keep.append(task)
    return keep


@derived_object
class _ProgressCallback(ms.measure_callback.PyMeasureCallback):
    """Shows MetaSchedule's trials on our progress bar, with the best time of each task."""

    def __init__(self, bar: ProgressBar, names: list[str]):
        super().__init__()
        self.bar = bar
        self.names = names
        self.done = 0
        self.best: dict[int, float] = {}

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        for result in runner_results:
            self.done += 1
            if result.run_secs:
                ms_time = float(sum(float(s) for s in result.run_secs) / len(result.run_secs)) * 1e3
                self.best[task_id] = min(self.best.get(task_id, float("inf")), ms_time)
        best = self.best.get(task_id)
        self.bar.update(self.done, f"{self.names[task_id]}: best " + (f"{best:.4f} ms" if best else "-"))


def tune_dense_parts(mod: tvm.IRModule, target, db, trials: int, options, progress) -> int:
    """Tune the unscheduled TIR functions of ``mod`` (after graph passes); returns tasks tuned."""
    tasks = _unscheduled_tasks(mod, target)
    if not logging.getLogger("penni_deploy").isEnabledFor(logging.INFO):
        # MetaSchedule logs every round at INFO; our progress bar says what matters
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    os.makedirs(db.metaschedule_dir, exist_ok=True)
    per_task = max(1, trials // max(1, len(tasks)))
    database = ms.database.JSONDatabase(work_dir=db.metaschedule_dir)
    todo = []
    for task in tasks:
        workload_mod = task.dispatched[0]
        known = database.get_top_k(database.commit_workload(workload_mod), per_task) \
            if database.has_workload(workload_mod) else []
        if len(known) < min(per_task, 1 + per_task // 2):
            todo.append(task)
    progress(f"MetaSchedule: {len(tasks)} dense tasks, {len(tasks) - len(todo)} already tuned")
    if not todo:
        return 0
    # The default search samples 512 candidates per round; a small budget needs a small population
    # or the sampling alone takes minutes on a 2-core machine.
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=min(512, max(16, 4 * per_task)), init_min_unmeasured=min(50, max(4, per_task)),
        genetic_num_iters=4 if per_task >= 32 else 1)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        todo, work_dir=db.metaschedule_dir, strategy=strategy, num_threads=target.num_threads)
    bar = ProgressBar(per_task * len(todo), "metaschedule")
    callbacks = ms.measure_callback.MeasureCallback.create("default") + [
        _ProgressCallback(bar, [t.task_name for t in todo])]
    ms.tune.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=db.metaschedule_dir,
        max_trials_global=per_task * len(todo), max_trials_per_task=per_task,
        num_trials_per_iter=min(64, per_task),
        builder=ms.builder.LocalBuilder(timeout_sec=300), runner=_ms_runner(options),
        database=database, measure_callbacks=callbacks)
    bar.close()
    return len(todo)


def _ms_runner(options):
    if options.rpc_tracker:
        host, _, port = options.rpc_tracker.rpartition(":")
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=options.rpc_key,
                                     session_timeout_sec=300)
        return ms.runner.RPCRunner(rpc_config=config)
    return ms.runner.LocalRunner()
