"""Compile a model and measure it against its baselines, same threads, one run.

Engines (each measured in its own process, see ``worker``):

- ``torch-dense``: the network with PENNI layers multiplied back into dense ``nn.Conv2d`` (PyTorch eager);
- ``torch-two-stage``: PyTorch eager running PENNI's exact two-stage form;
- ``tvm-dense``: TVM without the PENNI passes (BN folding and our dense conv kernels only), on the
  dense network;
- ``penni-deploy``: the compiled artifact, loaded with the TVM runtime as a user would;
- with ``peers``: torch.compile, onnxruntime, OpenVINO (f32 and bf16) and DeepSparse (``peers.py``).

For TorchScript and ``.pt2`` inputs the PyTorch module is not rebuilt: the network as saved, at each batch
size (``peers.SavedNetwork``), is what PyTorch eager (``torch-as-saved``) and the peers (``*-as-saved``)
run, and the engines that need the PENNI layers are reported as unavailable. Every network reaches its
worker as a file it loads on its own (``launch.save_network``). An engine that cannot run (a package or
venv missing, a failed export) is a row with an ``error`` saying why and how to fix it, never left out.

Every engine gets the same random input and its output is checked against the PyTorch network it runs
(``max_rel_error``). The run also times a large matmul for the roofline (``roofline.py``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from ..calibration import check_calibration, load_calibration
from ..compiler import compile_loaded
from ..frontend import load_model, resolve_input_shape
from ..frontend.load_model import LoadedModel
from .launch import run_worker, save_check, save_network, worker_spec
from .options import BenchOptions
from .peer_runs import measure_peers
from .peers import SavedNetwork, peer_networks, saved_network, select_engines
from .roofline import with_roofline

Progress = Callable[[str], None]

BUSY_CPU_WAIT = 0.05  # a row whose threads waited this much of their timed window for a core is flagged
DRIFT = 1.3  # a row whose slowest chunk of timed runs has a median this many times its fastest's is flagged


def _is_saved_file(loaded: LoadedModel) -> bool:
    """A TorchScript or .pt2 model: a network as saved, without PENNI layers to rebuild other forms from."""
    return isinstance(loaded.model, (torch.jit.ScriptModule, torch.export.ExportedProgram))


def _module_references(model: torch.nn.Module) -> dict[str, torch.nn.Module | None]:
    """PyTorch eager's networks for a module: the dense and the two-stage copies of its PENNI layers."""
    from ..models.dense_copy import has_penni_layers, to_dense_model, to_two_stage_model

    if has_penni_layers(model):
        return {"torch-dense": to_dense_model(model), "torch-two-stage": to_two_stage_model(model)}
    return {"torch-dense": model, "torch-two-stage": None}


def _saved_references(network: SavedNetwork) -> dict[str, SavedNetwork | None]:
    return {"torch-as-saved": network, "torch-dense": None, "torch-two-stage": None}


def run_bench(path: str, *, arch: str | None = None, trust_pickle: bool = False,
              input_shape: tuple[int, ...] | None = None, options: BenchOptions | None = None,
              progress: Progress = lambda _m: None) -> dict:
    """Compile ``path`` and measure every engine at every batch size; returns a JSON-able report."""
    from ..artifact.runtime import load

    options = options or BenchOptions()
    device = _bench_device(options)
    loaded = load_model(path, arch=arch, trust_pickle=trust_pickle)
    saved_file = _is_saved_file(loaded)
    shapes = {batch: resolve_input_shape(loaded, input_shape, batch) for batch in options.batches}
    # A saved file's network at each batch size, made before any measuring: a .pt2 that fixed its batch
    # size fails here, in seconds, with the error compile would give.
    saved_networks = ({batch: saved_network(loaded.model, shape) for batch, shape in shapes.items()}
                      if saved_file else {})
    module_references = None if saved_file else _module_references(loaded.model)
    engines = select_engines(options.peer_engines, saved=saved_file,
                             int8=options.compile.precision == "int8") if options.peers else ()
    fp32_options = replace(options.compile, precision="fp32", calibration=None, int8_layers="auto")
    calibration = None
    if options.compile.precision == "int8" and options.compile.calibration is not None:
        shape = shapes[options.batches[0]]
        calibration = (load_calibration(options.compile.calibration, shape)
                       if isinstance(options.compile.calibration, str) else
                       check_calibration(options.compile.calibration, shape))
    networks, pruned_sparsity = peer_networks(loaded.model) if engines and not saved_file else ({}, {})
    if saved_file:
        dense_loaded = loaded  # TVM without the PENNI passes compiles the network as saved
    else:
        dense_source = module_references["torch-dense"]
        dense_loaded = LoadedModel(dense_source, "module", loaded.input_shape, loaded.source_sha256)
    results = []
    parity = {}
    with tempfile.TemporaryDirectory(prefix="penni-bench-") as tmp:
        progress(f"measuring the fp32 matmul peak ({options.matmul_n}×{options.matmul_n})")
        peak = run_worker({"engine_kind": "matmul-peak", "threads": options.threads, "n": options.matmul_n})
        for batch in options.batches:
            shape = shapes[batch]
            if saved_file:
                references = _saved_references(saved_networks[batch])
                networks, pruned_sparsity = peer_networks(saved_networks[batch]) if engines else ({}, {})
            else:
                references = module_references
            artifacts = {}
            progress(f"batch {batch}: compiling penni-deploy artifact")
            artifacts["penni-deploy"] = os.path.join(tmp, f"penni-b{batch}.penni")
            manifest = compile_loaded(loaded, artifacts["penni-deploy"], input_shape=shape, options=options.compile)
            if options.compile.tuning_db:  # also the untuned build, to show what tuning gained
                progress(f"batch {batch}: compiling penni-deploy without the tuning database (cost model)")
                artifacts["penni-deploy-untuned"] = os.path.join(tmp, f"penni-untuned-b{batch}.penni")
                compile_loaded(loaded, artifacts["penni-deploy-untuned"], input_shape=shape,
                               options=replace(options.compile, tuning_db=None))
            if options.compile.precision != "fp32":  # what the reduced precision gained over our own fp32
                progress(f"batch {batch}: compiling penni-deploy in fp32")
                artifacts["penni-deploy-fp32"] = os.path.join(tmp, f"penni-fp32-b{batch}.penni")
                compile_loaded(loaded, artifacts["penni-deploy-fp32"], input_shape=shape, options=fp32_options)
            progress(f"batch {batch}: compiling TVM without the PENNI passes")
            artifacts["tvm-dense"] = os.path.join(tmp, f"dense-b{batch}.penni")
            dense_options = replace(fp32_options if options.compile.precision == "int8" else options.compile,
                                    pipeline="dense")
            compile_loaded(dense_loaded, artifacts["tvm-dense"], input_shape=shape, options=dense_options)

            x = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
            reference = next(m for m in references.values() if m is not None)
            check = save_check(tmp, x, "reference", reference)
            expected = np.load(check["expected"])
            got = load(artifacts["penni-deploy"])(x)
            parity[batch] = float(np.abs(got - expected).max() / max(1e-12, np.abs(expected).max()))

            for name, module in references.items():
                engine = {"engine": name, "batch": batch, "precision": "fp32"}
                if module is None:
                    engine["error"] = "unavailable for this model format"
                else:
                    progress(f"batch {batch}: measuring {name}")
                    network = module.saved if isinstance(module, SavedNetwork) else module
                    file, torch_format = save_network(network, os.path.join(tmp, f"{name}-b{batch}"))
                    engine.update(run_worker(worker_spec(options, "torch", file, shape, device, check,
                                                         torch_format=torch_format)))
                results.append(engine)
            for name, artifact in artifacts.items():
                progress(f"batch {batch}: measuring {name}")
                precision = {"penni-deploy-fp32": "fp32", "tvm-dense": dense_options.precision}.get(
                    name, options.compile.precision)
                results.append({"engine": name, "batch": batch, "precision": precision,
                                **run_worker(worker_spec(options, "tvm", artifact, shape, device, check))})
            if engines:
                results.extend(measure_peers(networks, shape, options, tmp, x=x, engines=engines,
                                             calibration=calibration, progress=progress))
    report = {
        "model": os.path.basename(path), "format": loaded.format, "threads": options.threads, "device": device,
        "target": manifest.target, "conv_macs_dense": sum(layer["macs_dense"] for layer in manifest.layers),
        "conv_macs_compiled": sum(layer["macs_compiled"] for layer in manifest.layers),
        "parity_max_rel_error": parity, "results": results,
    }
    if pruned_sparsity:
        report["pruned_conv_sparsity"] = pruned_sparsity
    return with_roofline(report, peak)


def _bench_device(options: BenchOptions) -> str:
    """The device to measure on: the compile target's, checked against ``--device`` and availability."""
    from ..errors import PenniError

    target_device = options.compile.make_target().device
    device = options.device or target_device
    if options.peers and device != "cpu":
        raise PenniError("--peers compares CPU engines (the roofline too): run it with --device cpu --target x86")
    if device != target_device:
        raise PenniError(f"--device {device} needs an artifact built for it: pass --target "
                         f"{'cuda' if device == 'cuda' else 'x86'}")
    if device == "cuda":
        import tvm

        if not (tvm.cuda(0).exist and torch.cuda.is_available()):
            raise PenniError("bench --device cuda needs an NVIDIA GPU with its driver, and PyTorch with CUDA; "
                             "none is available here (use --target x86, or run scripts/gpu_check.py on a GPU machine)")
    return device


def format_bench_table(report: dict) -> str:
    """Latency table: speedups over dense PyTorch eager of the same batch size, ratios to the roofline."""
    lines = [(f"model {report['model']} ({report['format']}), {report['threads']} threads, "
              f"target {report['target'].get('mcpu', report['target'].get('name'))}; "
              f"conv MACs/image dense {report['conv_macs_dense']:,} → compiled {report['conv_macs_compiled']:,}"),
             _roofline_line(report),
             (f"{'engine':<26} {'prec':>4} {'batch':>5} {'median ms':>10} {'p90 ms':>9} {'speedup':>8} "
              f"{'×roofline':>9} {'model MB':>9} {'infer MB':>9} {'rel err':>8}")]
    baseline = {}
    for r in report["results"]:
        if r["engine"] in ("torch-dense", "torch-as-saved") and "median_ms" in r:
            baseline.setdefault(r["batch"], r["median_ms"])
    for r in report["results"]:
        head = f"{r['engine']:<26} {r.get('precision', 'fp32'):>4} {r['batch']:>5}"
        if "median_ms" not in r:
            lines.append(f"{head}  {r.get('error', 'not measured')}")
            continue
        base = baseline.get(r["batch"])
        speedup = f"{base / r['median_ms']:.2f}×" if base else "-"
        ratio = f"{r['roofline_ratio']:.1f}" if "roofline_ratio" in r else "-"
        mem = f"{r['model_mb']:>9.1f} {r['inference_mb']:>9.1f}" if "model_mb" in r else f"{'-':>9} {'-':>9}"
        error = f"{r['max_rel_error']:.1e}" if "max_rel_error" in r else "-"
        lines.append(f"{head} {r['median_ms']:>10.3f} {r['p90_ms']:>9.3f} {speedup:>8} {ratio:>9} {mem} {error:>8}")
    drifted = [f"{r['engine']} b{r['batch']} {max(r['chunk_medians_ms']) / min(r['chunk_medians_ms']):.1f}×"
               for r in report["results"]
               if len(r.get("chunk_medians_ms", ())) > 1 and max(r["chunk_medians_ms"]) > DRIFT * min(r["chunk_medians_ms"])]
    if drifted:
        lines.append(f"the machine changed speed during these rows (slowest over fastest tenth of their timed runs: "
                     f"{', '.join(drifted)}): on a shared host, its cores slowing down or other processes (see "
                     "cpu_wait), not the engine; their medians vary from run to run")
    parity = ", ".join(f"batch {b}: {e:.1e}" for b, e in report["parity_max_rel_error"].items())
    lines.append(f"penni-deploy vs PyTorch, max abs error / output scale: {parity}")
    waited = [f"{r['engine']} b{r['batch']} {r['cpu_wait']:.0%}" for r in report["results"]
              if r.get("cpu_wait", 0.0) > BUSY_CPU_WAIT]
    if waited:
        lines.append(f"busy machine: these rows' threads waited for a core during their timed runs "
                     f"({', '.join(waited)}); other processes used the cores, so their medians are inflated "
                     "and vary from run to run")
    if "pruned_conv_sparsity" in report and any(r["engine"] == "deepsparse-pruned" for r in report["results"]):
        values = list(report["pruned_conv_sparsity"].values())
        lines.append(f"deepsparse-pruned: dense convs magnitude-pruned to each PENNI layer's coefficient sparsity "
                     f"({min(values):.1%}-{max(values):.1%} zeros); rel err is against that pruned network")
    return "\n".join(lines)


def _roofline_line(report: dict) -> str:
    peak = report.get("peak", {})
    if "gmacs" not in peak:
        return f"roofline: no matmul peak ({peak.get('error', 'not measured')})"
    bounds = ", ".join(f"batch {b}: {ms:.3f} ms" for b, ms in report["roofline_ms"].items())
    return (f"fp32 matmul peak ({peak['n']}², {report['threads']} threads): {peak['peak_gflops']:.1f} GFLOP/s = "
            f"{peak['gmacs']:.1f} GMAC/s; roofline (compiled conv MACs at that rate): {bounds}")
