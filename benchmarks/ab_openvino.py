"""Artifacts against OpenVINO on the dense network, all in one process, timed in alternating rounds
(as ``ab_artifacts.py``: a slowdown of the host hits every engine alike), with each artifact's
error against PyTorch float32.

    .venv/bin/python benchmarks/ab_openvino.py model.pt --arch resnet50 A.penni [B.penni ...]
        [--precision bf16] [--rounds 10] [--calls 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

import penni_deploy
from penni_deploy.bench.peers import export_onnx, peer_networks
from penni_deploy.frontend.load_model import load_model


def median_ms(call, calls: int) -> float:
    times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        call()
        times[i] = time.perf_counter() - start
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--arch")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "f32"), help="OpenVINO's inference precision")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()

    import openvino

    threads = len(os.sched_getaffinity(0))  # what a loaded artifact uses by default
    models = [penni_deploy.load(path) for path in args.artifacts]
    shape = tuple(models[0].input_shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    dense = peer_networks(load_model(args.model, arch=args.arch).model, shape)[0]["dense"]
    with torch.no_grad():
        reference = dense(torch.from_numpy(x)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        compiled = openvino.Core().compile_model(
            export_onnx(dense, shape, os.path.join(tmp, "dense.onnx")), "CPU",
            {"INFERENCE_PRECISION_HINT": args.precision, "INFERENCE_NUM_THREADS": threads,
             "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    request = compiled.create_infer_request()
    names = [f"openvino-{args.precision}-dense"] + args.artifacts
    calls = [lambda: request.infer({0: x})] + [lambda m=m: m(x) for m in models]
    errors = [np.abs(np.array(request.infer({0: x})[compiled.output(0)]) - reference).max()]
    errors += [np.abs(m(x) - reference).max() for m in models]
    for call in calls:
        for _ in range(10):
            call()
    rounds = np.array([[median_ms(call, args.calls) for call in calls] for _ in range(args.rounds)])
    scale = np.abs(reference).max()
    print(f"input {shape}, {args.rounds} rounds of {args.calls} calls, {threads} threads; "
          "x OpenVINO: its time over this one's, per round")
    for i, name in enumerate(names):
        ratio = rounds[:, 0] / rounds[:, i]
        print(f"{name:40s} median {np.median(rounds[:, i]):8.3f} ms  x OpenVINO {np.median(ratio):.3f} "
              f"({ratio.min():.3f} .. {ratio.max():.3f})  rel err {errors[i] / scale:.1e}")


if __name__ == "__main__":
    main()
