"""What a call of a loaded artifact costs beyond its kernels, in one process, alternating rounds.

Times three ways of running the same artifact on the same input: ``model(x)`` as a user calls it
(the input copied into the thread's staging tensor, the output handed back without a copy), the
call path before that (a fresh TVM tensor per call and ``.numpy()`` on the output), and the VM
alone on a device-resident input (what ``bench`` times). Prints the median of the round medians
of each and the per-round differences.

    .venv/bin/python benchmarks/call_overhead.py model.penni [--rounds 20] [--calls 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from ab_artifacts import time_calls

import penni_deploy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--json", help="also write the round medians as JSON")
    args = parser.parse_args()

    model = penni_deploy.load(args.artifact)
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    vm_main = model._thread_vm()["main"]
    resident = model._tvm.runtime.tensor(x, model.device)

    def fresh_tensor_and_copy(array):
        return vm_main(model._tvm.runtime.tensor(np.ascontiguousarray(array), model.device)).numpy()

    ways = {"model(x)": model, "fresh tensor + .numpy()": fresh_tensor_and_copy,
            "VM on a resident input": lambda _: vm_main(resident)}
    for way in ways.values():
        for _ in range(50):
            way(x)
    rounds = np.array([[time_calls(way, x, args.calls) for way in ways.values()] for _ in range(args.rounds)])
    print(f"{args.artifact}: input {model.input_shape}, {args.rounds} rounds of {args.calls} calls, microseconds")
    for name, column in zip(ways, rounds.T):
        print(f"  {name:<26} {np.median(column) * 1e3:8.1f} (fastest round {column.min() * 1e3:.1f})")
    for k, name in ((1, "fresh tensor + .numpy()"), (2, "VM on a resident input")):
        diff = (rounds[:, 0] - rounds[:, k]) * 1e3
        print(f"  model(x) - {name}: median {np.median(diff):+.1f}, range {diff.min():+.1f} .. {diff.max():+.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"artifact": args.artifact, "ways": list(ways), "calls_per_round": args.calls,
                       "round_ms": rounds.tolist()}, f, indent=1)


if __name__ == "__main__":
    main()
