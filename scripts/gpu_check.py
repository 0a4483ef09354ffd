#!/usr/bin/env python3
"""One-shot GPU check: compile for the GPU present, check parity with PyTorch CUDA, benchmark.

Run on a machine with an NVIDIA GPU, its driver, nvcc (CUDA 13), PyTorch with CUDA and the TVM
wheel (``apache-tvm==0.27.0.post1``, ``apache-tvm-ffi==0.1.14.post1``), from the repository root:

    PYTHONPATH=. python3 scripts/gpu_check.py                 # all models, batch 1 and 64
    PYTHONPATH=. python3 scripts/gpu_check.py --json out.json

A GPU machine may lack the TVM compiler (its wheel is 100 MB): build the artifacts on any machine
with ``--build-to DIR --arch sm_90``, then run ``--artifacts DIR`` where only the TVM runtime is
installed. The artifacts carry the reference output of a fixed input, so the check also proves the
GPU machine rebuilt the same random-weight model.

For every model it compiles an artifact for the present GPU's architecture, checks it against
PyTorch on the GPU (max abs error / output scale), then times at each batch size, same inputs:
PyTorch CUDA eager on the dense network (C·B multiplied back into nn.Conv2d) and on the two-stage
form, each with and without CUDA graphs, and the penni-deploy artifact. It prints one table (median
and p90 of CUDA-synchronized wall time over repeated runs after warm-up).

Without a GPU it stops after compiling (``--allow-no-gpu`` makes that a success, for CI).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from penni_deploy.frontend.load_model import ZOO_INPUT_SHAPE, LoadedModel  # noqa: E402
from penni_deploy.models.dense_copy import to_dense_model, to_two_stage_model  # noqa: E402
from penni_deploy.models.examples import EXAMPLES, make_example  # noqa: E402


def gpu_arch() -> str | None:
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"sm_{major}{minor}"


def timed(fn, warmup: int, repeat: int) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90))}


def torch_runner(module: torch.nn.Module, x: torch.Tensor, cuda_graph: bool):
    module = module.eval().cuda()
    if not cuda_graph:
        def run():
            with torch.inference_mode():
                module(x)
        return run
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(3):  # warm up allocations outside the graph
            module(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        module(static_x)
    return graph.replay


def build_model(name: str, batches: list[int], arch: str, folder: str) -> None:
    """Compile ``name`` for ``arch`` at each batch size into ``folder``, with a reference output."""
    from penni_deploy.compiler import CompileOptions, compile_loaded

    model = make_example(name)
    for batch in batches:
        shape = (batch,) + tuple(ZOO_INPUT_SHAPE[1:])
        artifact = os.path.join(folder, f"{name}-b{batch}.penni")
        start = time.perf_counter()
        manifest = compile_loaded(LoadedModel(model, "module", shape, ""), artifact, input_shape=shape,
                                  options=CompileOptions(target="cuda", gpu_arch=arch))
        x = torch.from_numpy(np.random.default_rng(batch).standard_normal(shape).astype(np.float32))
        with torch.inference_mode():
            np.save(artifact + ".expected.npy", model(x).numpy())
        print(f"[{name} batch {batch}] compiled for {arch} in {time.perf_counter() - start:.1f}s "
              f"({manifest.library['gpu_code']})", flush=True)


def check_model(name: str, batches: list[int], warmup: int, repeat: int, folder: str) -> list[dict]:
    from penni_deploy.artifact.runtime import load

    model = make_example(name)
    rows = []
    for batch in batches:
        shape = (batch,) + tuple(ZOO_INPUT_SHAPE[1:])
        artifact = os.path.join(folder, f"{name}-b{batch}.penni")
        x_host = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
        x = torch.from_numpy(x_host).cuda()
        compiled = load(artifact, "cuda")
        with torch.inference_mode():
            expected = model.cuda()(x).cpu().numpy()
        scale = max(np.abs(expected).max(), 1e-12)
        same_model = float(np.abs(np.load(artifact + ".expected.npy") - expected).max() / scale)
        got = compiled(x_host)
        error = float(np.abs(got - expected).max() / scale)
        vs_cpu = float(np.abs(got - np.load(artifact + ".expected.npy")).max() / scale)
        print(f"[{name} batch {batch}] parity vs torch CUDA {error:.1e}, vs torch CPU {vs_cpu:.1e} "
              f"(torch CUDA vs CPU: {same_model:.1e})", flush=True)
        engines = {
            "torch-dense": lambda g: torch_runner(to_dense_model(model.cpu()), x, g),
            "torch-two-stage": lambda g: torch_runner(to_two_stage_model(model.cpu()), x, g),
        }
        for engine, make in engines.items():
            for graphs in (False, True):
                rows.append({"model": name, "batch": batch, "engine": engine + ("+graph" if graphs else ""),
                             **timed(make(graphs), warmup, repeat)})
        rows.append({"model": name, "batch": batch, "engine": "penni-deploy", "parity": max(error, same_model),
                     **timed(compiled.benchmark_callable(), warmup, repeat)})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<20} {'batch':>5} {'engine':<22} {'median ms':>10} {'p90 ms':>9} {'vs dense eager':>15}")
    base = {(r["model"], r["batch"]): r["median_ms"] for r in rows if r["engine"] == "torch-dense"}
    for r in rows:
        speedup = base[(r["model"], r["batch"])] / r["median_ms"]
        extra = f"  parity {r['parity']:.1e}" if "parity" in r else ""
        print(f"{r['model']:<20} {r['batch']:>5} {r['engine']:<22} {r['median_ms']:>10.3f} {r['p90_ms']:>9.3f} "
              f"{speedup:>14.2f}×{extra}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18-random97", help=f"comma-separated, from {', '.join(EXAMPLES)}")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--arch", help="override the GPU architecture (default: the present GPU's)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument("--allow-no-gpu", action="store_true", help="without a GPU, compile only and succeed")
    parser.add_argument("--build-to", help="only compile the artifacts into this folder (needs --arch or a GPU)")
    parser.add_argument("--artifacts", help="use artifacts built with --build-to instead of compiling here")
    args = parser.parse_args()
    models = args.models.split(",")
    batches = [int(b) for b in args.batches.split(",")]

    present = gpu_arch()
    arch = args.arch or present
    if args.build_to:
        os.makedirs(args.build_to, exist_ok=True)
        for name in models:
            build_model(name, batches, arch or "sm_80", args.build_to)
        return 0
    if present is None:
        print("no CUDA GPU visible to PyTorch: compiling only, no parity check or timing", flush=True)
        with tempfile.TemporaryDirectory(prefix="penni-gpu-check-") as folder:
            for name in models:
                build_model(name, batches, arch or "sm_80", folder)
        return 0 if args.allow_no_gpu else 1
    # fp32 against fp32: PyTorch would otherwise run convs in TF32 on Ampere and newer (~1e-3 error).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"GPU: {torch.cuda.get_device_name(0)} ({present}), torch {torch.__version__}, TF32 off", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="penni-gpu-check-") as folder:
        if args.artifacts:
            folder = args.artifacts
        else:
            for name in models:
                build_model(name, batches, arch, folder)
        for name in models:
            rows += check_model(name, batches, args.warmup, args.repeat, folder)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    bad = [r for r in rows if r.get("parity", 0) > 1e-4]
    if bad:
        print(f"PARITY FAILED: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
