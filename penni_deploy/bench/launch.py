"""Start the worker (``worker.py``) for one engine in a fresh process and read back its result.

One process per engine: engines loaded in one process interfere through their thread pools
(PyTorch's OpenMP, onnxruntime's, OpenVINO's TBB), and each process's memory counts one engine only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from .options import BenchOptions

WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_worker(spec: dict, python: str | None = None) -> dict:
    """Run the worker for ``spec`` under our Python, or under another venv's ``python``.

    The worker file runs by path, not as ``-m penni_deploy.bench.worker``: importing the package would
    load torch and the TVM compiler into every worker (seconds, and memory in every engine's process).
    Under our Python it runs with ``-P`` (the script's folder is not put on the path) and finds
    penni_deploy where this process found it. Another venv's Python runs it isolated (``-I``: nor user
    site-packages, nor our PYTHON* variables), and nothing of penni-deploy is imported there. A worker
    that fails comes back as ``{"error": ...}`` with its last line of stderr.
    """
    env = dict(os.environ, TVM_NUM_THREADS=str(spec["threads"]), OMP_NUM_THREADS=str(spec["threads"]),
               NM_DISABLE_ANALYTICS="1")  # DeepSparse sends no usage events from a benchmark
    if python is None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        command = [sys.executable, "-P", WORKER_FILE]
    else:
        command = [python, "-I", WORKER_FILE]
    try:
        proc = subprocess.run([*command, json.dumps(spec)], capture_output=True, text=True, env=env,
                              timeout=900, check=False)
    except OSError as e:
        return {"error": f"cannot start {command[0]}: {e.strerror}"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker failed: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_spec(options: BenchOptions, kind: str, path: str, shape, device: str, check: dict | None = None,
                precision: str = "fp32", torch_format: str | None = None) -> dict:
    """The worker's instructions: what to load, at which threads, how many runs, what to check against.

    ``torch_format`` says how a PyTorch engine's file was written (:func:`save_network`).
    """
    return {"engine_kind": kind, "path": path, "shape": list(shape), "threads": options.threads, "device": device,
            "warmup": options.warmup, "warmup_seconds": options.warmup_seconds, "repeat": options.repeat,
            "min_repeat": options.min_repeat, "min_seconds": options.min_seconds, "max_seconds": options.max_seconds,
            "check": check, "precision": precision, "torch_format": torch_format}


def save_network(network, path_stem: str) -> tuple[str, str]:
    """Write a PyTorch network to a file a worker loads on its own; returns the path and its ``torch_format``.

    - ``torchscript``: a ScriptModule, with ``torch.jit.save``;
    - ``pt2``: an ExportedProgram, with ``torch.export.save`` (its module cannot be pickled: the
      GraphModule holds local functions);
    - ``pickle``: a module of ours (the dense, two-stage or pruned copy, or the loaded zoo module), with
      ``torch.save``; our own temporary file, whose classes the worker imports from penni_deploy.
    """
    if isinstance(network, torch.jit.ScriptModule):
        torch.jit.save(network, path_stem + ".torchscript.pt")
        return path_stem + ".torchscript.pt", "torchscript"
    if isinstance(network, torch.export.ExportedProgram):
        torch.export.save(network, path_stem + ".pt2")
        return path_stem + ".pt2", "pt2"
    torch.save(network, path_stem + ".pt")
    return path_stem + ".pt", "pickle"


def save_check(workdir: str, x: np.ndarray, name: str, module) -> dict:
    """Save input ``x`` and ``module``'s output on it, for a worker to check its engine's output against."""
    batch = x.shape[0]
    paths = {"input": os.path.join(workdir, f"input-{name}-b{batch}.npy"),
             "expected": os.path.join(workdir, f"expected-{name}-b{batch}.npy")}
    np.save(paths["input"], x)
    with torch.inference_mode():
        np.save(paths["expected"], module(torch.from_numpy(x)).numpy().astype(np.float64))
    return paths
