"""Shared fixtures: seeded random PENNI models and an in-memory compile-and-run helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from penni_deploy.models import build_model, randomize_penni_weights_


def random_penni_model(arch: str, density: float, seed: int = 0) -> torch.nn.Module:
    return randomize_penni_weights_(build_model(arch), density, seed=seed).eval()


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Max abs error relative to the output's scale (max |expected|)."""
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


@pytest.fixture(scope="session")
def compile_module():
    """Compile an nn.Module in memory for ``shape``; returns (run(x) -> np.ndarray, CompiledProgram)."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from penni_deploy.compiler import CompileOptions, compile_program
    from penni_deploy.frontend import export_program
    from penni_deploy.frontend.load_model import LoadedModel

    def build(module, shape, pipeline="penni"):
        program = export_program(LoadedModel(module, "module", None, ""), tuple(shape))
        built = compile_program(program, tuple(shape), CompileOptions(pipeline=pipeline))
        vm = VirtualMachine(built.executable, tvm.cpu())

        def run(x: np.ndarray) -> np.ndarray:
            return vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32))).numpy()

        return run, built

    return build
