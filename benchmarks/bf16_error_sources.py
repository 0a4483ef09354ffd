"""Where a bf16 build's output error comes from, layer by layer, simulated in PyTorch.

A bf16 build rounds each dense conv's (and Linear's) weights and input to bf16 and sums in float32.
This script does the same rounding in the float32 PyTorch network, for chosen sets of layers, and
reports ``max |y - y_fp32| / max |y_fp32|`` (the `bench` "rel err") of each set: all dense layers,
each stage alone, each of the first layers alone, weights or inputs alone, and a plain random
relative perturbation of one layer's input as large as bf16's rounding (2^-9). It answers whether
an error target is within reach of bf16 arithmetic on a network at all, before any kernel is built.

    .venv/bin/python benchmarks/bf16_error_sources.py model.pt --arch resnet50 [--input-shape 1,3,224,224]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn

from penni_deploy.frontend.load_model import load_model
from penni_deploy.models.dense_copy import has_penni_layers, to_dense_model


def to_bf16(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


class Simulation:
    """The dense float32 network and its reference output on one random input."""

    def __init__(self, network: nn.Module, shape: tuple[int, ...], seed: int = 0):
        self.network = network.eval()
        self.x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
        self.layers = [(name, m) for name, m in network.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            self.reference = network(self.x)

    def error(self, chosen, weights: bool = True, inputs: bool = True, input_noise: float = 0.0) -> float:
        """The relative error with the ``chosen`` layers' weights and/or inputs rounded to bf16 (or, with
        ``input_noise``, their inputs multiplied by ``1 + u``, ``u`` uniform in ``±input_noise``)."""
        saved, hooks = {}, []
        for name, m in self.layers:
            if name not in chosen:
                continue
            if weights and not input_noise:
                saved[name] = m.weight.data
                m.weight.data = to_bf16(m.weight.data)
            if input_noise:
                hooks.append(m.register_forward_pre_hook(
                    lambda _m, inp: (inp[0] * (1 + input_noise * (2 * torch.rand_like(inp[0]) - 1)),)))
            elif inputs:
                hooks.append(m.register_forward_pre_hook(lambda _m, inp: (to_bf16(inp[0]),)))
        try:
            with torch.no_grad():
                y = self.network(self.x)
        finally:
            for h in hooks:
                h.remove()
            for name, m in self.layers:
                if name in saved:
                    m.weight.data = saved[name]
        return float((y - self.reference).abs().max() / self.reference.abs().max())


def is_dense(m: nn.Module) -> bool:
    """The layers a bf16 build runs in bf16: Linear and 1×1 convs (a PENNI network's k×k convs are
    PENNI layers, which stay float32)."""
    return isinstance(m, nn.Linear) or m.kernel_size == (1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--arch")
    parser.add_argument("--input-shape", default="1,3,224,224")
    parser.add_argument("--first", type=int, default=8, help="report this many of the first bf16 layers alone")
    args = parser.parse_args()

    module = load_model(args.model, arch=args.arch).model
    if not isinstance(module, nn.Module) or not has_penni_layers(module):
        raise SystemExit("needs a state_dict (with --arch) or pickled module with PENNI layers")
    sim = Simulation(to_dense_model(module), tuple(int(v) for v in args.input_shape.split(",")))
    dense = [name for name, m in sim.layers if is_dense(m)]
    stages = sorted({name.split(".")[0] for name in dense if name.startswith("layer")})

    rows = [("every bf16 layer (what the build rounds)", sim.error(dense)),
            ("  weights only", sim.error(dense, inputs=False)),
            ("  inputs only", sim.error(dense, weights=False))]
    rows += [(f"{stage} only", sim.error([n for n in dense if n.startswith(stage + ".")])) for stage in stages]
    rows += [(f"all but {stage}", sim.error([n for n in dense if not n.startswith(stage + ".")]))
             for stage in stages[:1]]
    rows += [(f"{name} alone", sim.error([name])) for name in dense[: args.first]]
    rows += [(f"{dense[0]}: input × (1 ± 2^-9 uniform), no rounding", sim.error([dense[0]], input_noise=2.0 ** -9))]
    print(f"{args.model}: {len(dense)} bf16 layers; rel err = max|y - y_fp32| / max|y_fp32| (PyTorch simulation)")
    for label, err in rows:
        print(f"{label:60s} {err:.1e}")


if __name__ == "__main__":
    main()
