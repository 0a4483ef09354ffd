"""Measure the peer engines (``peers.PEER_ENGINES``) on one batch size: one row per engine, always.

Each engine runs in its own worker process (``launch.run_worker``) with the bench's threads, on the
network of its form: torch.compile loads the PyTorch module (for a saved file, the exported program),
the ONNX engines the one ONNX file exported per form and batch size. An engine that cannot run gets a
row with an ``error`` saying what is missing and how to install it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from .launch import run_worker, save_check, save_network, worker_spec
from .options import BenchOptions
from .peers import (
    PEER_ENGINES,
    PeerEngine,
    PeerUnavailableError,
    SavedNetwork,
    deepsparse_python,
    export_onnx,
    missing_reason,
    quantize_onnx,
)


def measure_peers(networks: dict[str, nn.Module | SavedNetwork | str], shape: tuple[int, ...], options: BenchOptions,
                  workdir: str, *, x: np.ndarray | None = None, engines: Sequence[PeerEngine] = PEER_ENGINES,
                  calibration: np.ndarray | None = None,
                  progress: Callable[[str], None] = lambda _m: None) -> list[dict]:
    """One result row per engine of ``engines`` for input ``shape``, measured or with its ``error``.

    Parameters
    ----------
    networks : dict
        From ``peers.peer_networks``: form to module (or saved network), or to the reason there is none.
    shape : tuple of int
        The input shape; its first entry is the batch size.
    options : BenchOptions
        Threads and run counts, as for every other engine of the bench.
    workdir : str
        A folder for the saved modules, ONNX files and check arrays.
    x : np.ndarray, optional
        The input to time and check on (default: seeded by the batch size, as the driver's).
    calibration : np.ndarray, optional
        What the int8 engines' networks are quantized with (the int8 build's calibration array).
    """
    batch = shape[0]
    if x is None:
        x = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
    # (form, "onnx" | "torch") -> (path, torch_format), or why the export failed
    files: dict[tuple[str, str], tuple[str, str | None] | PeerUnavailableError] = {}
    checks = {form: save_check(workdir, x, form, net) for form, net in networks.items() if not isinstance(net, str)}
    rows = []
    for engine in engines:
        row = {"engine": engine.name, "batch": batch, "precision": engine.precision}
        network = networks[engine.form]
        # the model's own reason first: installing the engine would not give it a network to run
        reason = network if isinstance(network, str) else missing_reason(engine)
        if reason is None and engine.precision == "int8" and calibration is None:
            reason = "int8 engines quantize with the calibration array of bench --precision int8 --calibration X.npy"
        if reason is None:
            key = (engine.form, "onnx" if engine.needs_onnx else "torch")
            if key not in files:
                progress(f"batch {batch}: saving the {engine.form} network as {key[1]}")
                files[key] = _save(network, key, shape, workdir)
            if engine.precision == "int8" and not isinstance(files[key], PeerUnavailableError):
                fp32_key, key = key, (engine.form, "onnx-int8")
                if key not in files:
                    progress(f"batch {batch}: quantizing the {engine.form} network with onnxruntime")
                    files[key] = _quantized(files[fp32_key][0], calibration)
            reason = str(files[key]) if isinstance(files[key], PeerUnavailableError) else None
        if reason is not None:
            rows.append({**row, "error": reason})
            continue
        progress(f"batch {batch}: measuring {engine.name}")
        path, torch_format = files[key]
        spec = worker_spec(options, engine.kind, path, shape, "cpu", checks[engine.form], engine.precision,
                           torch_format)
        python = deepsparse_python() if engine.kind == "deepsparse" else None  # its own venv (numpy<2)
        rows.append({**row, **run_worker(spec, python)})
    return rows


def _quantized(fp32_path: str, calibration: np.ndarray):
    try:
        return quantize_onnx(fp32_path, fp32_path.replace(".onnx", "-int8.onnx"), calibration), None
    except PeerUnavailableError as e:
        return e


def _save(network: nn.Module | SavedNetwork, key: tuple[str, str], shape: tuple[int, ...], workdir: str):
    form, fmt = key
    stem = os.path.join(workdir, f"peer-{form}-b{shape[0]}")
    if fmt == "torch":  # torch.compile runs a saved file's exported program, and our own modules as they are
        return save_network(network.program if isinstance(network, SavedNetwork) else network, stem)
    try:
        return export_onnx(network, tuple(shape), stem + ".onnx"), None
    except PeerUnavailableError as e:
        return e
