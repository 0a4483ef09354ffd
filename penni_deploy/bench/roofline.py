"""The roofline: how fast the compiled PENNI model's conv MACs could run at this machine's fp32 FMA rate.

The rate is what a large fp32 matmul reaches at the bench's thread count (best of several runs,
:func:`matmul_peak`; ``bench`` runs it with ``torch.mm`` in its own worker process, ``profile`` with NumPy
in its own process): a practical peak, not the datasheet's. The
roofline is arithmetic only, memory traffic ignored, so it is a lower bound on latency:

    roofline_ms = conv MACs per image of the compiled model × batch / MAC rate

Each row's ``roofline_ratio`` is its median over that bound. It is measured against the PENNI model's
work for every engine, so the extra MACs of engines running the dense network are part of their ratio.
"""

from __future__ import annotations

import ctypes
import os
import time


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


def matmul_peak(threads: int, n: int = 2048, repeat: int = 10, library: str = "numpy") -> dict:
    """The best time of an ``n``×``n`` fp32 matmul at ``threads``: the machine's usable FMA rate.

    Parameters
    ----------
    threads : int
        Threads the matmul may use.
    n : int
        Matrix size.
    repeat : int
        Timed runs; the best one counts.
    library : str
        ``numpy`` (its BLAS; needs nothing but NumPy, for ``profile``) or ``torch`` (``torch.mm``, for ``bench``).

    Returns
    -------
    dict
        ``gmacs`` (10^9 multiply-adds per second, ``n^3 / best time``), ``peak_gflops`` (twice that),
        ``n``, ``best_ms``, ``threads`` and ``library``; ``threads_set`` is False when NumPy's BLAS offered no
        way to set its thread count (it then used its own default).
    """
    import numpy as np

    threads_set = True
    if library == "torch":
        import torch

        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(0)
        a, b, out = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen), torch.empty(n, n)

        def mm():
            torch.mm(a, b, out=out)
    else:
        threads_set = _set_numpy_blas_threads(threads)
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
        out = np.empty((n, n), np.float32)

        def mm():
            np.matmul(a, b, out=out)
    best = _best_seconds(mm, repeat, warmup=2)
    gmacs = n**3 / best / 1e9
    return {"n": n, "best_ms": best * 1e3, "gmacs": gmacs, "peak_gflops": 2 * gmacs, "threads": threads,
            "library": library, "threads_set": threads_set}


def _best_seconds(run, repeat: int, warmup: int) -> float:
    """The fastest of ``repeat`` timed calls of ``run``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def memory_bandwidth(threads: int, megabytes: int = 256, repeat: int = 5) -> dict:
    """The machine's read bandwidth at ``threads``: the best time of ``threads`` NumPy threads each
    summing its share of one ``megabytes`` array (far larger than any cache; NumPy's reduction loop
    releases the GIL). A kernel that streams its weights once per run (a Linear at batch 1) is
    bound by this, not by the FMA peak.

    Returns
    -------
    dict
        ``gbps`` (10^9 bytes per second), ``megabytes``, ``best_ms`` and ``threads``.
    """
    import threading

    import numpy as np

    data = np.ones(max(1, megabytes) * (1 << 20) // 4, np.float32)
    chunks = np.array_split(data, max(1, threads))

    def read_all():
        workers = [threading.Thread(target=np.add.reduce, args=(chunk,)) for chunk in chunks]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    best = _best_seconds(read_all, repeat, warmup=1)
    return {"gbps": data.nbytes / best / 1e9, "megabytes": data.nbytes / (1 << 20), "best_ms": best * 1e3,
            "threads": threads}


# The thread-count setters of the OpenBLAS builds NumPy wheels ship (64-bit-integer ones carry a suffix).
_OPENBLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")


def _set_numpy_blas_threads(threads: int) -> bool:
    """Set the thread count of the OpenBLAS NumPy loaded; False when it is not found.

    OpenBLAS reads ``OPENBLAS_NUM_THREADS`` only when it loads, which is long past by now, so this
    calls its setter in the library already mapped into the process.
    """
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in os.path.basename(line.split()[-1]).lower()}
    except OSError:
        return False
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _OPENBLAS_SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(threads))
                return True
    return False
