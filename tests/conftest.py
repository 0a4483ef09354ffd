"""Shared fixtures: seeded random PENNI models and an in-memory compile-and-run helper."""

from __future__ import annotations

import numpy as np
import pytest


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
