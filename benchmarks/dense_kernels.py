"""GMAC/s of the CPU GEMM kernel on ImageNet ResNet50's dense layer shapes (1×1 convs and the 7×7 stem).

Each kernel runs on one thread and is timed in this thread's CPU time (``time.thread_time``), so
other processes on a shared machine do not inflate the numbers; compare with the machine's fp32
matmul rate per core (``bench``'s peak line divided by its threads).

    .venv/bin/python benchmarks/dense_kernels.py [--batch N] [--orientation auto|pixels|channels]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["TVM_NUM_THREADS"] = "1"  # before TVM starts its pool

import numpy as np  # noqa: E402
import tvm  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from penni_deploy.kernels.cpu.gemm import (  # noqa: E402
    conv_source,
    default_tile,
    gemm_conv_kernel,
    needs_base_table,
    pack_weights,
    pick_orientation,
)
from penni_deploy.plan import Epilogue  # noqa: E402
from penni_deploy.plan.geometry import ConvGeometry  # noqa: E402
from penni_deploy.targets import get_target  # noqa: E402

#: (Cin, H, W, Cout, k, stride, padding) of ResNet50's distinct dense layers at 224×224.
RESNET50_DENSE = [(64, 56, 56, 256, 1, 1, 0), (256, 56, 56, 64, 1, 1, 0), (256, 56, 56, 512, 1, 2, 0),
                  (128, 28, 28, 512, 1, 1, 0), (512, 28, 28, 128, 1, 1, 0), (512, 28, 28, 1024, 1, 2, 0),
                  (256, 14, 14, 1024, 1, 1, 0), (1024, 14, 14, 256, 1, 1, 0), (1024, 14, 14, 2048, 1, 2, 0),
                  (512, 7, 7, 2048, 1, 1, 0), (2048, 7, 7, 512, 1, 1, 0), (3, 224, 224, 64, 7, 2, 3)]


def cpu_seconds(fn, args, reps: int) -> float:
    """Best of 5 rounds of ``reps`` calls, per call, in this thread's CPU time."""
    fn(*args)
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        for _ in range(reps):
            fn(*args)
        best = min(best, (time.thread_time() - start) / reps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--orientation", default="auto", choices=["auto", "pixels", "channels"])
    args = parser.parse_args()
    target = get_target("x86")
    lanes = 16 if target.isa == "avx512" else 8
    rng = np.random.default_rng(0)
    total_macs = total_s = 0.0
    for cin, h, w, cout, k, s, p in RESNET50_DENSE:
        g = ConvGeometry(args.batch, cin, h, w, k, k, (s, s), (p,) * 4)
        pixels = g.out_height * g.out_width
        orientation = pick_orientation(pixels, cout, lanes) if args.orientation == "auto" else args.orientation
        kernel = gemm_conv_kernel(g, cout, Epilogue(bias=True, relu=True), lanes=lanes, threads=1,
                                  orientation=orientation)
        weights = pack_weights(rng.random((cout, cin * k * k), dtype=np.float32), orientation,
                               default_tile(lanes))
        tables = [conv_source(g)[2]] if needs_base_table(g) else []
        arrays = [rng.random((args.batch, cin, h, w), dtype=np.float32), weights, *tables,
                  rng.random(cout, dtype=np.float32), np.zeros((args.batch, cout, pixels), np.float32)]
        lib = tvm.compile(kernel, target=target.tvm_target)
        macs = args.batch * cout * pixels * cin * k * k
        seconds = cpu_seconds(lib, [tvm.runtime.tensor(a) for a in arrays], max(1, int(2e8 // macs)))
        total_macs += macs
        total_s += seconds
        print(f"{cin:5d}×{h}×{w} → {cout:5d}  k{k} s{s}  batch {args.batch}  {orientation:8s} "
              f"{seconds * 1e3:8.3f} ms  {macs / seconds / 1e9:5.1f} GMAC/s", flush=True)
    print(f"all: {total_s * 1e3:.2f} ms of one core's CPU time, {total_macs / total_s / 1e9:.1f} GMAC/s")


if __name__ == "__main__":
    main()
