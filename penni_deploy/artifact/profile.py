"""``penni-deploy profile``: where an artifact's time goes, kernel by kernel, against the machine's peak.

Runtime side, like ``runtime.py``: NumPy and the TVM runtime only, no torch, no compiler. TVM 0.27 has
no VM profiler any more (``VirtualMachine(profile=True)`` is gone), so:

1. the artifact is loaded as ``penni_deploy.load`` loads it, and ``repeat`` inferences run with a
   VM instrument (``set_instrument``) that times every kernel call the VM makes, in place (the
   ``median_ms`` of each call over the runs), and records the arguments of the first run;
2. that call sequence must be the manifest's kernel table (``targets/kernel_table.py``), which says
   which conv layer each call computes;
3. each call is also timed alone on those arguments by TVM's ``time_evaluator`` (C++, the median of
   ``repeat`` single calls): ``alone_ms``, with its weights and inputs warm in cache;
4. the whole model is timed without the instrument, and a NumPy fp32 matmul measures the peak.

The in-model time is what the model pays, including the caches a kernel finds cold (weights read
once per inference come from memory: VGG16's 512×512 Linear takes 1.2 ms in the model, 0.35 ms
alone), plus about a microsecond of instrument per call. The gap between the kernels' sum and the
whole model is the VM's own work (allocations, builtins) and the instrument's.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from ..bench.roofline import matmul_peak, memory_bandwidth
from ..errors import ArtifactError, InputSpecError
from .runtime import CompiledModel, load


def profile_artifact(path: str, x: np.ndarray | None = None, *, repeat: int = 50, threads: int | None = None,
                     peak_size: int = 2048, bandwidth_mb: int = 256) -> dict:
    """Time every kernel call of the artifact at ``path`` on input ``x``.

    Parameters
    ----------
    path : str
        A CPU ``.penni`` artifact compiled with its kernel table (penni-deploy 0.1 with ``profile``).
    x : numpy.ndarray, optional
        Input of the compiled shape and dtype; seeded random normal values by default.
    repeat : int
        Instrumented runs, measurements of each kernel alone, and timed runs of the whole model
        (medians are reported).
    threads : int, optional
        TVM threads (and the matmul peak's); the runtime's default (every usable core) when omitted.
    peak_size : int
        Matrix size of the peak measurement.
    bandwidth_mb : int
        Size of the array whose read measures the memory bandwidth.

    Returns
    -------
    dict
        JSON-able: ``kernels`` (each call in run order with ``median_ms`` in the model and
        ``alone_ms``), ``rows`` (per layer, and
        per kernel between the layers, slowest first, with shares, MACs, GMAC/s and fraction of
        peak), ``by_op`` (share per op kind), ``model_median_ms``, ``kernels_ms`` (in the model),
        ``kernels_alone_ms`` and ``peak``.
    """
    if repeat < 1 or peak_size < 1:
        raise InputSpecError(f"--repeat and --peak-size must be at least 1, not {repeat} and {peak_size}")
    model = load(path, threads=threads)  # the runtime's default threads unless told: what a user gets
    threads = model.threads
    if model.manifest.target.get("device", "cpu") != "cpu":
        raise ArtifactError(f"{path} is a {model.manifest.target.get('device')} artifact; profile measures CPU "
                            "artifacts (compile with --target x86)")
    table = model.manifest.kernels
    if not table:
        raise ArtifactError(f"{path} has no kernel table (compiled before penni-deploy profile existed); "
                            "recompile it")
    if x is None:
        x = np.random.default_rng(0).standard_normal(model.input_shape).astype(model.input_dtype)
    model(x)  # checks shape and dtype (one-line errors), and warms up
    calls, seconds = _time_in_model(model, x, repeat)
    if [symbol for symbol, _ in calls] != [entry["kernel"] for entry in table]:
        raise ArtifactError(f"the kernels {path} runs ({len(calls)} calls) do not match its manifest's kernel table "
                            f"({len(table)} entries): the artifact is inconsistent; recompile it")
    library = _library(model)
    kernels = []
    for position, ((symbol, args), entry) in enumerate(zip(calls, table)):
        evaluator = library.time_evaluator(symbol, model.device, number=1, repeat=repeat)
        kernels.append({"position": position, **entry, "median_ms": float(np.median(seconds[position])) * 1e3,
                        "alone_ms": float(np.median(evaluator(*args).results)) * 1e3})
    model_ms = _model_median_ms(model, x, repeat)
    peak = matmul_peak(threads, n=peak_size)
    bandwidth = memory_bandwidth(threads, bandwidth_mb)
    batch = model.input_shape[0]
    rows = _rows(kernels, model.manifest.layers, batch, peak["gmacs"], bandwidth["gbps"])
    total = sum(k["median_ms"] for k in kernels)
    return {"kernels_alone_ms": sum(k["alone_ms"] for k in kernels), "artifact": path,
            "input_shape": list(model.input_shape), "threads": threads, "repeat": repeat,
            "precision": model.manifest.target.get("precision", "fp32"),
            "model_median_ms": model_ms, "kernels_ms": total, "peak": peak, "bandwidth": bandwidth, "rows": rows,
            "by_op": _by_op(rows, total), "kernels": kernels}


def _time_in_model(model: CompiledModel, x: np.ndarray, runs: int) -> tuple[list[tuple[str, tuple]], list[list]]:
    """Every kernel call of ``runs`` inferences, timed in place (VM builtins left out).

    Returns (symbol, arguments) of each call of the first run, in order, and per call position the
    seconds it took in each run.
    """
    calls: list[tuple[str, tuple]] = []
    seconds: list[list[float]] = []
    position, started = 0, 0.0

    def instrument(func, symbol, before_run, ret_value, *args):
        nonlocal position, started
        if symbol.startswith("vm.builtin."):
            return 0
        if before_run:
            if len(calls) == position:
                calls.append((symbol, args))
                seconds.append([])
            started = time.perf_counter()
        else:
            model.device.sync()
            seconds[position].append(time.perf_counter() - started)
            position += 1
        return 0  # VMInstrumentReturnKind.NO_OP: run the call

    model._vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            position = 0
            model(x)
    finally:
        model._vm.set_instrument(None)
    return calls, seconds


def _library(model: CompiledModel):
    """The compiled library the VM calls kernels from (the VM module's import)."""
    imports = model._vm.module.imports
    if not imports:
        raise ArtifactError(f"{model.path}: the VM has no kernel library to time kernels in; recompile it")
    return imports[0]


def _model_median_ms(model: CompiledModel, x: np.ndarray, repeat: int) -> float:
    tensor = model._tvm.runtime.tensor(np.ascontiguousarray(x), model.device)
    main = model._vm["main"]
    times = []
    for _ in range(max(repeat, 3)):
        start = time.perf_counter()
        main(tensor)
        model.device.sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def layer_label(layer: dict) -> str:
    """``#3 penni 64×56×56→64 3/1``: a layer of the manifest, short enough for a table."""
    _, c, h, w = layer["input"]
    return f"#{layer['index']} {layer['kind']} {c}×{h}×{w}→{layer['output'][1]} {layer['kernel'][0]}/{layer['stride'][0]}"


def _rows(kernels: list[dict], layers: list[dict], batch: int, peak_gmacs: float, bandwidth_gbps: float) -> list[dict]:
    """One row per conv layer (its kernels summed) and per kernel between the layers (its calls summed).

    ``weight_gbps`` is the row's constant bytes (weights, coefficients) over its time: against the
    memory bandwidth it says how close a weight-bound kernel is to its limit (``None`` for rows
    with under 1 MiB of weights, which stay in cache between runs, or a kernel table without them)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for k in kernels:
        groups[("layer", k["layer"]) if k["layer"] is not None else ("kernel", k["kernel"])].append(k)
    total = sum(k["median_ms"] for k in kernels) or float("nan")
    rows = []
    for (kind, key), members in groups.items():
        ms = sum(k["median_ms"] for k in members)
        alone_ms = sum(k["alone_ms"] for k in members)
        if kind == "layer":
            layer = layers[key]
            name, op, macs = layer_label(layer), layer["kind"], layer["macs_compiled"] * batch
        else:
            macs_each = [k["macs"] for k in members]
            name, op = key, members[0]["op"]
            macs = sum(macs_each) if all(m is not None for m in macs_each) else None
        gmacs = macs / (ms * 1e6) if macs is not None and ms > 0 else None
        sizes = [k.get("weight_bytes") for k in members]
        weight_bytes = sum(sizes) if all(size is not None for size in sizes) else None
        weight_gbps = weight_bytes / (ms * 1e6) if weight_bytes and weight_bytes >= 1 << 20 and ms > 0 else None
        rows.append({"name": name, "op": op, "layer": key if kind == "layer" else None,
                     "kernels": sorted({k["kernel"] for k in members}), "calls": len(members), "median_ms": ms, "alone_ms": alone_ms,
                     "share": ms / total, "macs": macs, "gmacs": gmacs,
                     "peak_fraction": gmacs / peak_gmacs if gmacs is not None else None,
                     "weight_bytes": weight_bytes, "weight_gbps": weight_gbps,
                     "bandwidth_fraction": weight_gbps / bandwidth_gbps if weight_gbps is not None else None})
    return sorted(rows, key=lambda r: -r["median_ms"])


def _by_op(rows: list[dict], total_ms: float) -> dict[str, float]:
    """Share of the kernels' time per op kind, largest first."""
    shares: dict[str, float] = defaultdict(float)
    for row in rows:
        shares[row["op"]] += row["median_ms"] / total_ms if total_ms > 0 else 0.0
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def format_profile_table(report: dict) -> str:
    """The report as a fixed-width table for people, slowest first."""
    peak = report["peak"]
    threads = report["threads"]
    model_ms, kernels_ms = report["model_median_ms"], report["kernels_ms"]
    lines = [
        f"profile of {report['artifact']}: input {tuple(report['input_shape'])}, "
        f"{report.get('precision', 'fp32')}, TVM threads {threads}, "
        f"medians of {report['repeat']} runs; 'ms' in the model, 'alone' with warm caches",
        f"whole model {model_ms:.3f} ms; kernels sum {kernels_ms:.3f} ms in the model ({kernels_ms / model_ms:.0%} of "
        f"it; the rest: VM builtins, instrument), {report['kernels_alone_ms']:.3f} ms alone",
        f"fp32 peak {peak['gmacs']:.1f} GMAC/s = {peak['peak_gflops']:.1f} GFLOP/s ({peak['library']} matmul "
        f"{peak['n']}², {peak['threads']} threads{'' if peak['threads_set'] else ', BLAS default threads'})"
        + {"bf16": "; bf16 dense layers can reach about twice that",
           "int8": "; int8 convs (vpdpbusd) can reach about four times that"}.get(report.get("precision"), ""),
    ]
    if report.get("bandwidth"):
        bw = report["bandwidth"]
        lines.append(f"memory bandwidth {bw['gbps']:.1f} GB/s (read of {bw['megabytes']:.0f} MiB, {bw['threads']} threads); "
                     "'GB/s': a layer's weights over its time, where they exceed 1 MiB")
    lines.append("")
    header = f"{'layer / kernel':<40} {'op':<20} {'calls':>5} {'ms':>9} {'share':>6} {'alone':>8} {'MACs':>13} " \
             f"{'GMAC/s':>7} {'% peak':>6} {'GB/s':>6} {'% bw':>5}"
    lines += [header, "-" * len(header)]
    for row in report["rows"]:
        macs = f"{row['macs']:,}" if row["macs"] is not None else "-"
        gmacs = f"{row['gmacs']:.1f}" if row["gmacs"] is not None else "-"
        peak_pct = f"{row['peak_fraction']:.0%}" if row["peak_fraction"] is not None else "-"
        gbps = f"{row['weight_gbps']:.1f}" if row.get("weight_gbps") is not None else "-"
        bw_pct = f"{row['bandwidth_fraction']:.0%}" if row.get("bandwidth_fraction") is not None else "-"
        lines.append(f"{row['name'][:40]:<40} {row['op'][:20]:<20} {row['calls']:>5} {row['median_ms']:>9.4f} "
                     f"{row['share']:>6.1%} {row['alone_ms']:>8.4f} {macs:>13} {gmacs:>7} {peak_pct:>6} {gbps:>6} "
                     f"{bw_pct:>5}")
    lines.append("")
    lines.append("by op: " + ", ".join(f"{op} {share:.1%}" for op, share in report["by_op"].items()))
    return "\n".join(lines)
