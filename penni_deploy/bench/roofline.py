"""The roofline: how fast the compiled PENNI model's conv MACs could run at this machine's fp32 FMA rate.

The rate is what a large fp32 ``torch.mm`` reaches at the bench's thread count (best of several runs, in
its own worker process, ``matmul_peak`` in ``worker.py``): a practical peak, not the datasheet's. The
roofline is arithmetic only, memory traffic ignored, so it is a lower bound on latency:

    roofline_ms = conv MACs per image of the compiled model × batch / MAC rate

Each row's ``roofline_ratio`` is its median over that bound. It is measured against the PENNI model's
work for every engine, so the extra MACs of engines running the dense network are part of their ratio.
"""

from __future__ import annotations


def roofline_ms(conv_macs: int, batch: int, gmacs: float) -> float:
    """Milliseconds that ``conv_macs`` per image take for ``batch`` images at ``gmacs`` 10^9 MAC/s."""
    return conv_macs * batch / (gmacs * 1e9) * 1e3


def with_roofline(report: dict, peak: dict) -> dict:
    """``report`` with the measured peak, the roofline per batch size, and each row's ratio to it.

    ``peak`` is the ``matmul-peak`` worker's result; when it has an ``error`` the report carries that
    instead of a roofline.
    """
    if "gmacs" not in peak:
        return {**report, "peak": peak}
    bounds = {batch: roofline_ms(report["conv_macs_compiled"], batch, peak["gmacs"])
              for batch in sorted({r["batch"] for r in report["results"]})}
    results = [{**r, "roofline_ratio": r["median_ms"] / bounds[r["batch"]]}
               if "median_ms" in r and bounds[r["batch"]] > 0 else r  # no convs: no bound to compare with
               for r in report["results"]]
    return {**report, "peak": peak, "roofline_ms": bounds, "results": results}
