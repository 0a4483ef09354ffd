"""A/B two compiled artifacts on a noisy host: both loaded in one process with their defaults, timed
in alternating rounds, so a slowdown of the machine hits both alike; reports each one's median of
round medians and the per-round ratio (its median and range), which is what to believe when the
host's speed moves by 2× within minutes (`bench` times engines one after the other).

    .venv/bin/python benchmarks/ab_artifacts.py A.penni B.penni [--rounds 12] [--calls 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import penni_deploy


def time_calls(model, x: np.ndarray, calls: int) -> float:
    """Median ms of ``calls`` calls."""
    times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        model(x)
        times[i] = time.perf_counter() - start
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=200, help="timed calls per artifact per round")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--json", help="also write the round medians as JSON")
    args = parser.parse_args()

    models = [penni_deploy.load(path) for path in (args.a, args.b)]
    if models[0].input_shape != models[1].input_shape:
        raise SystemExit(f"the artifacts take different inputs: {models[0].input_shape} vs {models[1].input_shape}")
    x = np.random.default_rng(0).standard_normal(models[0].input_shape).astype(np.float32)
    for model in models:
        for _ in range(args.warmup):
            model(x)
    rounds = np.array([[time_calls(model, x, args.calls) for model in models] for _ in range(args.rounds)])
    ratio = rounds[:, 0] / rounds[:, 1]
    for name, column in zip((args.a, args.b), rounds.T):
        print(f"{name}: {np.median(column):.4f} ms (median of {args.rounds} round medians; "
              f"fastest round {column.min():.4f} ms)")
    print(f"A / B per round: median {np.median(ratio):.3f}, range {ratio.min():.3f} .. {ratio.max():.3f} "
          f"(> 1: B faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"a": args.a, "b": args.b, "input_shape": list(models[0].input_shape),
                       "calls_per_round": args.calls, "round_ms": rounds.tolist(),
                       "median_ratio": float(np.median(ratio))}, f, indent=1)


if __name__ == "__main__":
    main()
