"""Compile a model and measure it against its baselines, same threads, one run.

Engines (each measured in its own process, see ``worker``):

- ``torch-dense``: the network with PENNI layers multiplied back into dense ``nn.Conv2d`` (PyTorch eager);
- ``torch-two-stage``: PyTorch eager running PENNI's exact two-stage form;
- ``tvm-dense``: TVM without the PENNI passes (BN folding and our dense conv kernels only), on the
  dense network;
- ``penni-deploy``: the compiled artifact, loaded with the TVM runtime as a user would.

For TorchScript and ``.pt2`` inputs the PyTorch module is not rebuilt: it is measured as saved
(``torch-as-saved``), and the engines that need the PENNI layers are reported as unavailable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..compiler import CompileOptions, compile_loaded
from ..frontend import load_model, resolve_input_shape
from ..frontend.load_model import LoadedModel

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    """What to measure: batch sizes, threads, and how many timed runs (median and p90 are reported)."""

    batches: tuple[int, ...] = (1, 8)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    warmup: int = 10
    repeat: int = 100
    min_repeat: int = 20
    max_seconds: float = 10.0
    device: str | None = None  # default: the compile target's device
    compile: CompileOptions = field(default_factory=CompileOptions)


def _reference_modules(loaded: LoadedModel) -> dict[str, torch.nn.Module | None]:
    from ..models.dense_copy import has_penni_layers, to_dense_model, to_two_stage_model

    model = loaded.model
    if isinstance(model, torch.nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        if has_penni_layers(model):
            return {"torch-dense": to_dense_model(model), "torch-two-stage": to_two_stage_model(model)}
        return {"torch-dense": model, "torch-two-stage": None}
    module = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    return {"torch-as-saved": module, "torch-dense": None, "torch-two-stage": None}


def _measure(spec: dict) -> dict:
    env = dict(os.environ, TVM_NUM_THREADS=str(spec["threads"]), OMP_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, "-m", "penni_deploy.bench.worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker failed: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(path: str, *, arch: str | None = None, trust_pickle: bool = False,
              input_shape: tuple[int, ...] | None = None, options: BenchOptions = BenchOptions(),
              progress: Progress = lambda _m: None) -> dict:
    """Compile ``path`` and measure every engine at every batch size; returns a JSON-able report."""
    from ..artifact.runtime import load

    device = _bench_device(options)
    loaded = load_model(path, arch=arch, trust_pickle=trust_pickle)
    references = _reference_modules(loaded)
    dense_source = references.get("torch-dense") or references.get("torch-as-saved")
    dense_loaded = LoadedModel(dense_source, "module", loaded.input_shape, loaded.source_sha256)
    results = []
    parity = {}
    with tempfile.TemporaryDirectory(prefix="penni-bench-") as tmp:
        saved = {}
        for name, module in references.items():
            if module is None:
                continue
            saved[name] = os.path.join(tmp, f"{name}.pt")
            if isinstance(module, torch.jit.ScriptModule):
                torch.jit.save(module, saved[name])
            else:
                torch.save(module, saved[name])  # our own temporary file, loaded back by the worker
        for batch in options.batches:
            shape = resolve_input_shape(loaded, input_shape, batch)
            artifacts = {}
            progress(f"batch {batch}: compiling penni-deploy artifact")
            artifacts["penni-deploy"] = os.path.join(tmp, f"penni-b{batch}.penni")
            manifest = compile_loaded(loaded, artifacts["penni-deploy"], input_shape=shape, options=options.compile)
            progress(f"batch {batch}: compiling TVM without the PENNI passes")
            artifacts["tvm-dense"] = os.path.join(tmp, f"dense-b{batch}.penni")
            dense_options = replace(options.compile, pipeline="dense")
            compile_loaded(dense_loaded, artifacts["tvm-dense"], input_shape=shape, options=dense_options)

            x = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
            reference = next(m for m in references.values() if m is not None)
            with torch.inference_mode():
                expected = reference(torch.from_numpy(x)).numpy()
            got = load(artifacts["penni-deploy"])(x)
            parity[batch] = float(np.abs(got - expected).max() / max(1e-12, np.abs(expected).max()))

            for name, module in references.items():
                engine = {"engine": name, "batch": batch}
                if module is None:
                    engine["error"] = "unavailable for this model format"
                else:
                    progress(f"batch {batch}: measuring {name}")
                    kind = "torchscript" if isinstance(module, torch.jit.ScriptModule) else "torch"
                    engine.update(_measure(_spec(options, kind, saved[name], shape, device)))
                results.append(engine)
            for name, artifact in artifacts.items():
                progress(f"batch {batch}: measuring {name}")
                results.append({"engine": name, "batch": batch,
                                **_measure(_spec(options, "tvm", artifact, shape, device))})
    return {
        "model": os.path.basename(path), "format": loaded.format, "threads": options.threads, "device": device,
        "target": manifest.target, "conv_macs_dense": sum(layer["macs_dense"] for layer in manifest.layers),
        "conv_macs_compiled": sum(layer["macs_compiled"] for layer in manifest.layers),
        "parity_max_rel_error": parity, "results": results,
    }


def _bench_device(options: BenchOptions) -> str:
    """The device to measure on: the compile target's, checked against ``--device`` and availability."""
    from ..errors import PenniError

    target_device = options.compile.make_target().device
    device = options.device or target_device
    if device != target_device:
        raise PenniError(f"--device {device} needs an artifact built for it: pass --target "
                         f"{'cuda' if device == 'cuda' else 'x86'}")
    if device == "cuda":
        import tvm

        if not (tvm.cuda(0).exist and torch.cuda.is_available()):
            raise PenniError("bench --device cuda needs an NVIDIA GPU with its driver, and PyTorch with CUDA; "
                             "none is available here (use --target x86, or run scripts/gpu_check.py on a GPU machine)")
    return device


def _spec(options: BenchOptions, kind: str, path: str, shape, device: str) -> dict:
    return {"engine_kind": kind, "path": path, "shape": list(shape), "threads": options.threads, "device": device,
            "warmup": options.warmup, "repeat": options.repeat, "min_repeat": options.min_repeat,
            "max_seconds": options.max_seconds}


def format_bench_table(report: dict) -> str:
    """Latency table with speedups over the dense PyTorch baseline of the same batch size."""
    lines = [f"model {report['model']} ({report['format']}), {report['threads']} threads, "
             f"target {report['target'].get('mcpu', report['target'].get('name'))}; "
             f"conv MACs/image dense {report['conv_macs_dense']:,} → compiled {report['conv_macs_compiled']:,}",
             f"{'engine':<17} {'batch':>5} {'median ms':>10} {'p90 ms':>9} {'speedup':>8} {'model MB':>9} "
             f"{'infer MB':>9}"]
    baseline = {}
    for r in report["results"]:
        if r["engine"] in ("torch-dense", "torch-as-saved") and "median_ms" in r:
            baseline.setdefault(r["batch"], r["median_ms"])
    for r in report["results"]:
        if "median_ms" not in r:
            lines.append(f"{r['engine']:<17} {r['batch']:>5}  {r.get('error', 'not measured')}")
            continue
        base = baseline.get(r["batch"])
        speedup = f"{base / r['median_ms']:.2f}×" if base else "-"
        mem = (f"{r['model_mb']:>9.1f} {r['inference_mb']:>9.1f}" if "model_mb" in r else f"{'-':>9} {'-':>9}")
        lines.append(f"{r['engine']:<17} {r['batch']:>5} {r['median_ms']:>10.3f} {r['p90_ms']:>9.3f} {speedup:>8} {mem}")
    parity = ", ".join(f"batch {b}: {e:.1e}" for b, e in report["parity_max_rel_error"].items())
    lines.append(f"penni-deploy vs PyTorch, max abs error / output scale: {parity}")
    return "\n".join(lines)
