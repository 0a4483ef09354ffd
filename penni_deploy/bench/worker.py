"""Measure one engine in a fresh process: latency over repeated runs and peak inference memory.

Run by path, ``python -P .../worker.py SPEC_JSON`` (``launch.run_worker``), under our Python or another
venv's, as the DeepSparse worker is; prints one JSON line. This module imports only the standard library
and NumPy at the top, and each engine's package when it is measured, so any Python with NumPy and that
one engine can run it.

A process per engine keeps their memory and thread pools apart. Every engine is measured the same way:
its runtime is loaded first (:func:`_load_runtime`), then ``model_mb`` is what loading (and
compiling) the model added to the process, and ``inference_mb`` the high-water mark while running above
the level right after loading (activations, workspaces, allocator caches), read from /proc/self/status
after resetting it. On a GPU these are host memory only.

Engine kinds: ``tvm`` (a .penni artifact, loaded with ``penni_deploy.load`` as a user's process loads
it), ``torch`` (PyTorch eager) and ``torch-compile`` (inductor; the first, compiling call is part of
loading) on a file of the spec's ``torch_format`` (``launch.save_network``), ``onnxruntime``,
``openvino`` and ``deepsparse`` (an ONNX file), and ``matmul-peak``, which times a large fp32 matmul for
the roofline.

Timing (:func:`measure`) is the same for every engine: warm-up
for ``warmup`` runs and at least ``warmup_seconds`` (a fast engine's first milliseconds are not warm:
thread pools wake, caches and allocators fill), then timed runs until there are ``repeat`` of them and
``min_seconds`` have passed, so that the median of a sub-millisecond engine spans a window long enough
not to be one moment of the machine's load; past ``max_seconds`` a slow engine stops at ``min_repeat``.
No loop makes a median repeatable on cores that other processes use, so each row also says how much of
its timed window its threads spent runnable but waiting for a core (``cpu_wait``, from the kernel's
per-thread schedstat): near 0 on an idle machine, and the reason when two runs disagree.

A virtual machine's cores can also lose speed that no guest counter shows: on the 2-core development VM
the same artifact ran 0.7 ms for seconds, then 1.6 ms for seconds, inside one process, with no steal
time and no run-queue wait (its two vCPUs sharing one physical core for a while, most likely; a 2-thread
NumPy matmul swung 126-178 GFLOP/s the same way). The timed runs are also cut into up to ``CHUNKS``
consecutive chunks whose medians the row keeps (``chunk_medians_ms``): when the fastest and the slowest
differ by much, the machine changed speed during the row (``driver.DRIFT``). The median of all runs stays the reported latency: the lowest chunk median
was tried as a steadier figure and agreed worse across three runs (ResNet18 batch 8: 4.4-6.3 ms, against
5.9-6.8 ms for the median), since how fast the fastest stretch is varies too.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

import numpy as np

_INSTALL_HINTS = {
    "onnxruntime": "pip install 'penni-deploy[peers]'",
    "openvino": "pip install 'penni-deploy[peers]'",
    "deepsparse": "bash scripts/setup_deepsparse.sh",
}

# Imported before the memory baseline: the engine's runtime is not part of its model's memory.
_ENGINE_MODULES = {
    "tvm": ("tvm", "tvm.runtime.vm", "penni_deploy.artifact.runtime"),
    "torch": ("torch",),
    "torch-compile": ("torch", "torch._inductor.compile_fx"),
    "onnxruntime": ("onnxruntime",),
    "openvino": ("openvino",),
    "deepsparse": ("deepsparse",),
}


CHUNKS = 10  # consecutive chunks of the timed runs, each with its median, to see the machine change speed
MIN_CHUNK_RUNS = 5  # fewer runs per chunk and a chunk's median is one run's noise


class EngineMissingError(Exception):
    """The engine's package is not importable in this Python; reported as the row's error."""


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise EngineMissingError(f"{name} cannot be imported in {sys.executable} ({e}): "
                                 f"{_INSTALL_HINTS.get(name, 'install it')}") from None


def _load_runtime(kind: str) -> None:
    """Import the engine's packages (and load OpenVINO's CPU plugin), so that they do not count as the model's."""
    modules = [_import(name) for name in _ENGINE_MODULES[kind]]
    if kind == "openvino":
        modules[0].Core().get_property("CPU", "FULL_DEVICE_NAME")  # loads the plugin library


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _runqueue_wait_s() -> float | None:
    """Seconds this process's threads have been runnable but waiting for a core, summed over threads
    (the second field of /proc/self/task/*/schedstat); None where the kernel does not say."""
    total_ns = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total_ns += int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return total_ns / 1e9


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


# Each loader takes the spec and the input to time on, and returns (run, infer, facts): ``run()`` one
# timed inference on that input, ``infer(x)`` the output for ``x`` as a NumPy array (for the accuracy
# check), and ``facts`` entries for the report that only the loaded engine knows.


def _load_tvm(spec: dict, x: np.ndarray):
    import inspect

    from penni_deploy import load

    # The runtime's defaults, as a user's process gets them, at the bench's thread count: passed to the
    # loader where it takes one, else through TVM_NUM_THREADS (set by launch.run_worker).
    threads = {"threads": spec["threads"]} if "threads" in inspect.signature(load).parameters else {}
    model = load(spec["path"], device=spec.get("device", "cpu"), **threads)
    return model.benchmark_callable(), model, {}


def _load_torch(spec: dict, x: np.ndarray):
    torch = _import("torch")
    torch.set_num_threads(spec["threads"])
    device = spec.get("device", "cpu")
    torch_format = spec.get("torch_format") or "pickle"
    if torch_format == "torchscript":
        module = torch.jit.load(spec["path"]).eval()
    elif torch_format == "pt2":
        module = torch.export.load(spec["path"]).module()  # fixed in eval mode when exported: no .eval()
    else:
        module = torch.load(spec["path"], weights_only=False).eval()  # our own temporary file (save_network)
    module = module.to(device)
    if spec["engine_kind"] == "torch-compile":
        module = torch.compile(module)  # inductor; compiles on the first call below
    xt = torch.from_numpy(x).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def infer(a: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(a).to(device)).cpu().numpy()

    def run():
        with torch.inference_mode():
            module(xt)
        sync()

    if spec["engine_kind"] == "torch-compile":
        run()  # the slow first call: compile now, as part of loading
    return run, infer, {}


def _load_onnxruntime(spec: dict, x: np.ndarray):
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(spec["path"], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda: session.run(None, {name: x})), (lambda a: session.run(None, {name: a})[0]), {}


def _load_openvino(spec: dict, x: np.ndarray):
    ov = _import("openvino")
    precision = {"fp32": "f32", "bf16": "bf16"}[spec.get("precision", "fp32")]
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": spec["threads"],
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    compiled = ov.Core().compile_model(spec["path"], "CPU", config)
    request = compiled.create_infer_request()
    # What OpenVINO settled on: a CPU without bf16 falls back to f32, and the report must say so.
    actual = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def infer(a: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: a})[compiled.output(0)])

    return (lambda: request.infer({0: x})), infer, {"precision": {"f32": "fp32"}.get(actual, actual)}


def _load_deepsparse(spec: dict, x: np.ndarray):
    deepsparse = _import("deepsparse")
    engine = deepsparse.compile_model(spec["path"], batch_size=spec["shape"][0], num_cores=spec["threads"])
    return (lambda: engine.run([x])), (lambda a: engine.run([a])[0]), {}


_LOADERS = {
    "tvm": _load_tvm,
    "torch": _load_torch,
    "torch-compile": _load_torch,
    "onnxruntime": _load_onnxruntime,
    "openvino": _load_openvino,
    "deepsparse": _load_deepsparse,
}


def _input(spec: dict) -> np.ndarray:
    check = spec.get("check")
    if check:
        return np.load(check["input"])
    return np.random.default_rng(0).standard_normal(spec["shape"]).astype(np.float32)


def measure(spec: dict) -> dict:
    """Load, check against the expected output if given, warm up, then time ``spec``'s engine."""
    x = _input(spec)
    _load_runtime(spec["engine_kind"])
    rss0 = _status_kb("VmRSS")
    start = time.perf_counter()
    run, infer, facts = _LOADERS[spec["engine_kind"]](spec, x)
    load_s = time.perf_counter() - start
    rss_loaded = _status_kb("VmRSS")
    reset = _reset_peak()
    result = {"load_s": load_s, **facts}
    if spec.get("check"):
        expected = np.load(spec["check"]["expected"])
        got = np.asarray(infer(x), dtype=np.float64)
        result["max_rel_error"] = float(np.abs(got - expected).max() / max(1e-12, float(np.abs(expected).max())))
    warm_until = time.perf_counter() + spec.get("warmup_seconds", 0.0)
    warm = 0
    while warm < spec["warmup"] or time.perf_counter() < warm_until:
        run()
        warm += 1
    result["warmup_runs"] = warm
    wait0, start = _runqueue_wait_s(), time.perf_counter()
    times = _timed_runs(run, spec)
    wait1, window = _runqueue_wait_s(), time.perf_counter() - start
    if wait0 is not None and wait1 is not None and window > 0:
        # per thread the engine was asked to use: 0 on an idle machine, 0.5 when its threads ran half the time
        result["cpu_wait"] = (wait1 - wait0) / (window * spec["threads"])
    peak = _status_kb("VmHWM")
    ms = np.array(times) * 1e3
    chunks = chunk_medians_ms(ms)
    result.update(median_ms=float(np.median(ms)), p90_ms=float(np.percentile(ms, 90)), runs=len(times),
                  chunk_medians_ms=chunks)
    if rss0 and rss_loaded and peak and reset:
        result.update(model_mb=(rss_loaded - rss0) / 1024, inference_mb=max(0, peak - rss_loaded) / 1024,
                      peak_rss_mb=peak / 1024)
    return result


def chunk_medians_ms(ms: np.ndarray) -> list[float]:
    """Medians of up to ``CHUNKS`` consecutive chunks of ``ms``, each of ``MIN_CHUNK_RUNS`` runs or
    more; one chunk (the overall median) when there are too few runs to cut."""
    count = min(CHUNKS, len(ms) // MIN_CHUNK_RUNS)
    if count < 2:
        return [float(np.median(ms))]
    return [float(np.median(chunk)) for chunk in np.array_split(np.asarray(ms), count)]


def _timed_runs(run, spec: dict) -> list[float]:
    """Seconds of each timed ``run()``: ``repeat`` runs and ``min_seconds`` at least, and no more once both
    are reached; past ``max_seconds``, ``min_repeat`` runs are enough (a slow engine's budget)."""
    times = []
    start_all = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start_all
        enough = len(times) >= spec["repeat"] and elapsed >= spec.get("min_seconds", 0.0)
        out_of_time = len(times) >= spec["min_repeat"] and elapsed >= spec["max_seconds"]
        if enough or out_of_time:
            return times
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)


def matmul_peak(spec: dict) -> dict:
    """``roofline.matmul_peak`` with ``torch.mm`` at the spec's threads (``n``, ``repeat`` optional)."""
    _import("torch")
    from penni_deploy.bench.roofline import matmul_peak as measure_peak

    return measure_peak(spec["threads"], spec.get("n", 2048), spec.get("repeat", 10), library="torch")


def main() -> None:
    spec = json.loads(sys.argv[1])
    os.environ.setdefault("TVM_NUM_THREADS", str(spec["threads"]))
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # DeepSparse: no usage events from a benchmark
    try:
        result = matmul_peak(spec) if spec["engine_kind"] == "matmul-peak" else measure(spec)
    except EngineMissingError as e:
        result = {"error": str(e)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
