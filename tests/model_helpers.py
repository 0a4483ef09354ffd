"""Helpers shared by tests (importable: ``tests`` is on pytest's pythonpath)."""

from __future__ import annotations

import numpy as np
import torch

from penni_deploy.models import build_model, randomize_penni_weights_


def random_penni_model(arch: str, density: float, seed: int = 0) -> torch.nn.Module:
    """A zoo network with seeded random PENNI weights at coefficient ``density``."""
    return randomize_penni_weights_(build_model(arch), density, seed=seed).eval()


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Max abs error relative to the output's scale (max |expected|)."""
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))
