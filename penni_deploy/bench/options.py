"""What a bench run measures, as one immutable options object shared by the driver and the peer runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..compiler import CompileOptions
from ..machine import available_cores


@dataclass(frozen=True)
class BenchOptions:
    """What to measure: batch sizes, threads, and how many timed runs (median and p90 are reported)."""

    batches: tuple[int, ...] = (1, 8)
    threads: int = field(default_factory=available_cores)
    warmup: int = 10
    warmup_seconds: float = 0.5  # warm-up lasts at least this long, and ``warmup`` runs
    repeat: int = 100
    # Timed runs last at least this long, and ``repeat`` runs (see worker.measure). The development VM's
    # cores slow down for 2-3 s at a time: a 1 s window can fall inside one such stretch.
    min_seconds: float = 3.0
    min_repeat: int = 20
    max_seconds: float = 10.0  # a slow engine stops here once it has ``min_repeat`` runs
    device: str | None = None  # default: the compile target's device
    compile: CompileOptions = field(default_factory=CompileOptions)
    peers: bool = False  # also measure the engines of peers.PEER_ENGINES
    peer_engines: tuple[str, ...] | None = None  # names of the peers to measure; None: all of them
    matmul_n: int = 2048  # side of the square fp32 matmul that measures the machine's peak for the roofline
