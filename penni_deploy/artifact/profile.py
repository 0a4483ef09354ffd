"""``penni-deploy profile``: where an artifact's time goes, kernel by kernel, against the machine's peak.

Runtime side, like ``runtime.py``: NumPy and the TVM runtime only, no torch, no compiler. TVM 0.27 has
no VM profiler any more (``VirtualMachine(profile=True)`` is gone), so:

1. the artifact is loaded as ``penni_deploy.load`` loads it, and one inference runs with a VM
   instrument (``set_instrument``) that records every kernel the VM calls with its arguments;
2. that call sequence must be the manifest's kernel table (``targets/kernel_table.py``), which says
   which conv layer each call computes;
3. each call is timed on the arguments it had in the model by TVM's ``time_evaluator`` (C++, no
   Python in the timing): the median of ``repeat`` single calls. Short single calls, not long loops,
   because on a shared machine a long loop is almost always preempted somewhere, and then the
   kernels of parallel code wait for a descheduled thread: the median of short calls skips those;
4. the whole model is timed without the instrument, and a NumPy fp32 matmul measures the peak.

A kernel timed alone runs with its inputs and weights warm in cache, as a kernel in a model mostly
does (it reads what the previous one wrote); the gap between the sum of the kernels and the whole
model is the VM's own work (allocation, calls) and what caches lose between kernels.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

import numpy as np

from ..bench.roofline import matmul_peak
from ..errors import ArtifactError, InputSpecError
from .runtime import CompiledModel, load


def profile_artifact(path: str, x: np.ndarray | None = None, *, repeat: int = 50, threads: int | None = None,
                     peak_size: int = 2048) -> dict:
    """Time every kernel call of the artifact at ``path`` on input ``x``.

    Parameters
    ----------
    path : str
        A CPU ``.penni`` artifact compiled with its kernel table (penni-deploy 0.1 with ``profile``).
    x : numpy.ndarray, optional
        Input of the compiled shape and dtype; seeded random normal values by default.
    repeat : int
        Measurements per kernel, and timed runs of the whole model (medians are reported).
    threads : int, optional
        TVM threads (and the matmul peak's); all cores by default, as ``bench``. Takes effect only
        if no TVM kernel ran in this process before.
    peak_size : int
        Matrix size of the peak measurement.

    Returns
    -------
    dict
        JSON-able: ``kernels`` (each call in run order with ``median_ms``), ``rows`` (per layer, and
        per kernel between the layers, slowest first, with shares, MACs, GMAC/s and fraction of
        peak), ``by_op`` (share per op kind), ``model_median_ms``, ``kernels_ms`` and ``peak``.
    """
    if repeat < 1 or peak_size < 1:
        raise InputSpecError(f"--repeat and --peak-size must be at least 1, not {repeat} and {peak_size}")
    if threads is None:
        threads = os.cpu_count() or 1
    if threads < 1:
        raise InputSpecError(f"--threads must be at least 1, not {threads}")
    os.environ["TVM_NUM_THREADS"] = str(threads)  # until load(threads=) lands; as bench/launch.py does
    model = load(path)
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
    calls = _record_calls(model, x)
    if [symbol for symbol, _ in calls] != [entry["kernel"] for entry in table]:
        raise ArtifactError(f"the kernels {path} runs ({len(calls)} calls) do not match its manifest's kernel table "
                            f"({len(table)} entries): the artifact is inconsistent; recompile it")
    library = _library(model)
    kernels = []
    for position, ((symbol, args), entry) in enumerate(zip(calls, table)):
        evaluator = library.time_evaluator(symbol, model.device, number=1, repeat=repeat)
        median_ms = float(np.median(evaluator(*args).results)) * 1e3
        kernels.append({"position": position, **entry, "median_ms": median_ms})
    model_ms = _model_median_ms(model, x, repeat)
    peak = matmul_peak(threads, n=peak_size)
    batch = model.input_shape[0]
    rows = _rows(kernels, model.manifest.layers, batch, peak["gmacs"])
    total = sum(k["median_ms"] for k in kernels)
    return {"artifact": path, "input_shape": list(model.input_shape), "threads": threads, "repeat": repeat,
            "model_median_ms": model_ms, "kernels_ms": total, "peak": peak, "rows": rows,
            "by_op": _by_op(rows, total), "kernels": kernels}


def _record_calls(model: CompiledModel, x: np.ndarray) -> list[tuple[str, tuple]]:
    """(symbol, arguments) of every kernel call of one inference, in order (VM builtins left out)."""
    calls = []

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run and not symbol.startswith("vm.builtin."):
            calls.append((symbol, args))
        return 0  # VMInstrumentReturnKind.NO_OP: run the call

    model._vm.set_instrument(instrument)
    try:
        model(x)
    finally:
        model._vm.set_instrument(None)
    return calls


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


def _rows(kernels: list[dict], layers: list[dict], batch: int, peak_gmacs: float) -> list[dict]:
    """One row per conv layer (its kernels summed) and per kernel between the layers (its calls summed)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for k in kernels:
        groups[("layer", k["layer"]) if k["layer"] is not None else ("kernel", k["kernel"])].append(k)
    total = sum(k["median_ms"] for k in kernels) or float("nan")
    rows = []
    for (kind, key), members in groups.items():
        ms = sum(k["median_ms"] for k in members)
        if kind == "layer":
            layer = layers[key]
            name, op, macs = layer_label(layer), layer["kind"], layer["macs_compiled"] * batch
        else:
            macs_each = [k["macs"] for k in members]
            name, op = key, members[0]["op"]
            macs = sum(macs_each) if all(m is not None for m in macs_each) else None
        gmacs = macs / (ms * 1e6) if macs is not None and ms > 0 else None
        rows.append({"name": name, "op": op, "layer": key if kind == "layer" else None,
                     "kernels": sorted({k["kernel"] for k in members}), "calls": len(members), "median_ms": ms,
                     "share": ms / total, "macs": macs, "gmacs": gmacs,
                     "peak_fraction": gmacs / peak_gmacs if gmacs is not None else None})
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
        f"profile of {report['artifact']}: input {tuple(report['input_shape'])}, TVM threads {threads}, "
        f"median of {report['repeat']} measurements per kernel",
        f"whole model {model_ms:.3f} ms (median of {max(report['repeat'], 3)} runs); kernels sum {kernels_ms:.3f} ms "
        f"({kernels_ms / model_ms:.0%} of it; the rest: VM calls, allocation, colder caches)",
        f"fp32 peak {peak['gmacs']:.1f} GMAC/s = {peak['peak_gflops']:.1f} GFLOP/s ({peak['library']} matmul "
        f"{peak['n']}², {peak['threads']} threads{'' if peak['threads_set'] else ', BLAS default threads'})",
        "",
    ]
    header = f"{'layer / kernel':<40} {'op':<22} {'calls':>5} {'median ms':>10} {'share':>6} {'MACs':>13} " \
             f"{'GMAC/s':>7} {'% peak':>6}"
    lines += [header, "-" * len(header)]
    for row in report["rows"]:
        macs = f"{row['macs']:,}" if row["macs"] is not None else "-"
        gmacs = f"{row['gmacs']:.1f}" if row["gmacs"] is not None else "-"
        peak_pct = f"{row['peak_fraction']:.0%}" if row["peak_fraction"] is not None else "-"
        lines.append(f"{row['name'][:40]:<40} {row['op'][:22]:<22} {row['calls']:>5} {row['median_ms']:>10.4f} "
                     f"{row['share']:>6.1%} {macs:>13} {gmacs:>7} {peak_pct:>6}")
    lines.append("")
    lines.append("by op: " + ", ".join(f"{op} {share:.1%}" for op, share in report["by_op"].items()))
    return "\n".join(lines)
