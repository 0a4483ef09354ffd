"""Measure one engine in a fresh process: latency over repeated runs and peak inference memory.

Run as ``python -m penni_deploy.bench.worker SPEC_JSON``; prints one JSON line. A process per engine
keeps their memory apart: ``model_mb`` is what loading the model added to the process, and
``inference_mb`` the high-water mark while running above the level right after loading (activations,
workspaces, allocator caches), read from /proc/self/status after resetting it. On a GPU these are
host memory only.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _load(spec: dict):
    kind, device = spec["engine_kind"], spec.get("device", "cpu")
    if kind == "tvm":
        from penni_deploy.artifact.runtime import load

        return load(spec["path"], device).benchmark_callable()
    import torch

    torch.set_num_threads(spec["threads"])
    module = torch.load(spec["path"], weights_only=False) if kind == "torch" else torch.jit.load(spec["path"])
    module = module.eval().to(device)
    x = torch.randn(spec["shape"], device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        with torch.inference_mode():
            module(x)
        sync()

    return run


def measure(spec: dict) -> dict:
    rss0 = _status_kb("VmRSS")
    run = _load(spec)
    rss_loaded = _status_kb("VmRSS")
    reset = _reset_peak()
    for _ in range(spec["warmup"]):
        run()
    times = []
    deadline = time.perf_counter() + spec["max_seconds"]
    while len(times) < spec["repeat"] and (len(times) < spec["min_repeat"] or time.perf_counter() < deadline):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = _status_kb("VmHWM")
    ms = np.array(times) * 1e3
    result = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "runs": len(times)}
    if rss0 and rss_loaded and peak and reset:
        result.update(model_mb=(rss_loaded - rss0) / 1024, inference_mb=max(0, peak - rss_loaded) / 1024,
                      peak_rss_mb=peak / 1024)
    return result


def main() -> None:
    spec = json.loads(sys.argv[1])
    os.environ.setdefault("TVM_NUM_THREADS", str(spec["threads"]))
    print(json.dumps(measure(spec)))


if __name__ == "__main__":
    main()
