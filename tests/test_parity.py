"""Compiled networks equal PyTorch eager for every zoo architecture, sparsity and batch size."""

import numpy as np
import pytest
import torch
from model_helpers import random_penni_model, relative_error

DENSITIES = {"dense": 1.0, "10pct": 0.1, "3pct": 0.03, "all-zero": 0.0}
# Convs a PENNI layer replaces (k×k, stem included), per architecture.
PENNI_LAYERS = {"resnet18": 17, "resnet56": 55, "vgg16": 13}


@pytest.mark.parametrize("batch", [1, 4], ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("density", DENSITIES.values(), ids=DENSITIES.keys())
@pytest.mark.parametrize("arch", PENNI_LAYERS)
def test_compiled_network_matches_pytorch(arch, density, batch, compile_module):
    model = random_penni_model(arch, density, seed=1)
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    run, built = compile_module(model, x.shape)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert relative_error(run(x), expected) <= 1e-4

    penni = [layer for layer in built.layers if layer["kind"] == "penni"]
    assert len(penni) == PENNI_LAYERS[arch]  # every k×k conv became a PENNI layer
    nnz_density = sum(layer["coef_density"] for layer in penni) / len(penni)
    assert nnz_density == pytest.approx(density, abs=0.02)
    if density == 0.0:
        assert all(layer["kernels"].startswith("epilogue only") for layer in penni)
