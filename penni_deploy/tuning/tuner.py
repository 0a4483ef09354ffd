"""``penni-deploy tune``: measure each layer's kernel options on the real arrays and keep the best.

Flow: trace and rewrite the model exactly as ``compile`` does, then

1. PENNI layers: for every distinct layer workload, rank the search space (``space.candidates``) by
   the cost model and measure candidates best-first, the cost model's own pick first, so the
   database always shows how far the untuned build is from the tuned one. Trials are shared out
   evenly over the layers; configs already in the database are never measured again.
2. Dense convs: measure our hand kernel, and (with ``dense_trials``) tune the dense parts of the
   model with MetaSchedule (``metaschedule.tune_dense_parts``), then measure the conv layers with
   the tuned schedules, so ``compile`` can pick the faster of the two per layer.

Every measurement is appended to the database as it is taken (``database.py``): a killed run
resumes where it stopped, and re-tuning the same model only measures what is new.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import tvm

from ..compiler import graph_for_build
from ..errors import PenniError
from ..frontend import export_program, resolve_input_shape
from ..frontend.load_model import LoadedModel
from ..passes.conv_chain import read_conv_chain
from ..plan.layers import PENNI_COMPOSITE, ConvChain, plan_penni_layer
from . import cost_model
from .chooser import HAND_KERNEL, TVM_OPS
from .database import Record, TuningDatabase
from .measure import LocalRunner, TimingOptions, layer_inputs, layer_module
from .progress import ProgressBar
from .space import candidates
from .workload import dense_workload_key, describe_layer, penni_workload_key

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TuneOptions:
    """How much to tune, and where to measure.

    Parameters
    ----------
    trials : int
        Kernel-config measurements for the PENNI layers, shared out over the distinct layers.
    dense_trials : int
        MetaSchedule trials for the dense parts (0: measure our dense kernels only).
    rpc_tracker, rpc_key : str, optional
        Measure on a device leased from this TVM RPC tracker (``host:port``) under this key.
    timing : TimingOptions
        Repeats per measurement.
    """

    trials: int = 200
    dense_trials: int = 0
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    timing: TimingOptions = TimingOptions()


def _runner(options: TuneOptions):
    if options.rpc_tracker:
        if not options.rpc_key:
            raise PenniError("--rpc-tracker needs --rpc-key (the key the RPC servers registered with)")
        from .measure import RpcRunner

        runner = RpcRunner(options.rpc_tracker, options.rpc_key, options.timing)
        runner.check()
        return runner
    return LocalRunner(options.timing)


def _chains(mod: tvm.IRModule) -> list[ConvChain]:
    from ..passes.layer_report import _composite_calls_in_order

    return [read_conv_chain(f) for f in _composite_calls_in_order(mod)]


def tune_loaded(loaded: LoadedModel, db_path: str, target, *, input_shape=None, batch=None,
                options: TuneOptions = TuneOptions(), progress: Progress = lambda _m: None) -> dict:
    """Tune ``loaded`` for ``target`` into the database folder ``db_path``; returns a summary."""
    key = target.tuning_key()
    db = TuningDatabase(db_path)
    shape = resolve_input_shape(loaded, input_shape, batch)
    progress(f"tracing with torch.export for input {shape}")
    # The layers as compile builds them: traced for its micro-batch when it uses one.
    mod, _, _ = graph_for_build(export_program(loaded, shape), shape, target,
                                retrace=lambda s: export_program(loaded, s))
    chains = _chains(mod)
    runner = _runner(options)
    machine = cost_model.Machine(target.kernels.lanes, target.num_threads)

    # distinct PENNI workloads (ResNets repeat layers), in model order
    layers: dict[str, tuple] = {}
    for chain in chains:
        if chain.kind == PENNI_COMPOSITE:
            plan = plan_penni_layer(chain)
            if plan.coefs.nnz:
                layers.setdefault(penni_workload_key(plan), (chain, plan))
    dense: dict[str, ConvChain] = {}
    for chain in chains:
        if chain.kind != PENNI_COMPOSITE:
            dense.setdefault(dense_workload_key(chain), chain)

    per_layer = max(1, math.ceil(options.trials / max(1, len(layers))))
    plans = []
    for wkey, (chain, plan) in layers.items():
        ranked = [c for _, c in cost_model.rank(plan, candidates(plan), machine)]
        default = cost_model.choose(plan, machine)
        ranked = [default] + [c for c in ranked if c != default]
        plans.append((wkey, chain, plan, ranked[:per_layer]))
    total = sum(len(p[3]) for p in plans) + len(dense)
    bar = ProgressBar(total, "tune")
    summary = {"target": key, "runner": runner.name, "layers": [], "measured": 0, "reused": 0, "failed": 0}
    done = 0
    start = time.perf_counter()
    for index, (wkey, chain, plan, configs) in enumerate(plans):
        text = describe_layer(chain, plan)
        known = db.measured(key, wkey)
        for config in configs:
            done += 1
            if _config_key(config.to_json()) in known:
                summary["reused"] += 1
            else:
                record = _measure(target, runner, chain, plan, config, key, wkey, text)
                db.add(record)
                summary["measured"] += 1
                summary["failed"] += record.error is not None
            best = db.best(key, wkey)
            bar.update(done, f"layer {index + 1}/{len(plans)} {text}: best "
                       + (f"{best.ms:.4f} ms" if best else "-") + f", model est. {_model_ms(db, key, chains):.3f} ms")
        best = db.best(key, wkey)
        untuned = db.measured(key, wkey).get(_config_key(cost_model.choose(plan, machine).to_json()))
        summary["layers"].append({"layer": text, "workload": wkey, "best": best.config if best else None,
                                  "best_ms": best.ms if best else None,
                                  "cost_model_ms": untuned.ms if untuned else None})
    for wkey, chain in dense.items():
        done += 1
        if _config_key({"impl": HAND_KERNEL}) not in db.measured(key, wkey):
            db.add(_measure(target, runner, chain, None, None, key, wkey, describe_layer(chain)))
        bar.update(done, f"dense {describe_layer(chain)}")
    bar.close()
    if options.dense_trials > 0:
        from .metaschedule import tune_dense_parts

        progress(f"MetaSchedule: tuning the dense parts ({options.dense_trials} trials)")
        tune_dense_parts(mod, target, db, options.dense_trials, options, progress)
        # measured again on every run: the MetaSchedule database may hold better schedules now
        for wkey, chain in dense.items():
            db.add(_measure(target, runner, chain, None, None, key, wkey, describe_layer(chain),
                            metaschedule_dir=db.metaschedule_dir))
    summary["seconds"] = time.perf_counter() - start
    summary["model_estimate_ms"] = _model_ms(db, key, chains)
    db.write_log(summary)
    return summary


def _config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _model_ms(db: TuningDatabase, key: str, chains: list[ConvChain]) -> float:
    """Sum of the best measured layer times (conv layers only; a rough model estimate)."""
    total = 0.0
    for chain in chains:
        if chain.kind == PENNI_COMPOSITE:
            plan = plan_penni_layer(chain)
            if not plan.coefs.nnz:
                continue
            best = db.best(key, penni_workload_key(plan))
        else:
            best = db.best(key, dense_workload_key(chain))
        total += best.ms if best else 0.0
    return total


def _measure(target, runner, chain, plan, config, key, wkey, text, metaschedule_dir=None) -> Record:
    if plan is not None:
        config_json = config.to_json()
        mod = layer_module(chain, target.kernels, config, plan)
    else:
        config_json = {"impl": TVM_OPS if metaschedule_dir else HAND_KERNEL}
        mod = layer_module(chain, target.kernels, as_tvm_ops=bool(metaschedule_dir))
    try:
        executable = target.build(mod, metaschedule_dir=metaschedule_dir)
        ms = runner.run(executable, layer_inputs(chain), target.device)
        return Record(key, wkey, config_json, ms, text)
    except PenniError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failing candidate is recorded and skipped, not fatal
        return Record(key, wkey, config_json, None, text, error=f"{type(exc).__name__}: {str(exc)[:300]}")
