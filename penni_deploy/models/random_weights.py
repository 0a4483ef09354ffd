"""Seeded random weights at a chosen coefficient density, for tests and benchmarks without checkpoints.

BatchNorm running statistics are calibrated on one seeded random batch (computed in float64, so that the
thread count cannot change the float32 result), then jittered. BatchNorm thus normalises as in a trained
network and activations stay O(1) through deep residual stacks, whatever the density; invented statistics
would let each residual block multiply the stream's variance.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from penni_deploy.models.penni_conv import PenniConv2d

logger = logging.getLogger(__name__)

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def randomize_penni_weights_(
    model: nn.Module,
    density: float,
    seed: int,
    *,
    input_shape: tuple[int, ...] = (2, 3, 32, 32),
) -> nn.Module:
    """Fill ``model`` in place with seeded random weights; PENNI coefficients keep a fraction ``density``.

    Parameters
    ----------
    model : nn.Module
        Any model; its :class:`PenniConv2d`, ``nn.Conv2d``, ``nn.Linear`` and BatchNorm layers are filled.
    density : float
        Probability that each PENNI coefficient is kept (0: all-zero layers, 1: dense).
    seed : int
        Same seed, same weights.
    input_shape : tuple of int
        Shape of the calibration batch for BatchNorm statistics (CIFAR by default); it needs a batch of at
        least 2 when the model has BatchNorm1d.

    Returns
    -------
    nn.Module
        ``model``, in eval mode.
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, PenniConv2d):
                _fill_penni(module, density, gen)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                _fill_dense(module, gen)
            elif isinstance(module, _BN_TYPES) and module.affine:
                module.weight.copy_(_uniform(module.weight.shape, 0.5, 1.5, gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        if any(isinstance(m, _BN_TYPES) and m.track_running_stats for m in model.modules()):
            _calibrate_batchnorm(model, torch.randn(input_shape, generator=gen, dtype=torch.float64), gen)
    logger.debug("randomized %s at coefficient density %.4g with seed %d", type(model).__name__, density, seed)
    return model.eval()


def _uniform(shape: torch.Size, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def _fill_penni(conv: PenniConv2d, density: float, gen: torch.Generator) -> None:
    d, kk = conv.basis.shape
    basis = torch.randn(d, kk, generator=gen)
    conv.basis.copy_(basis / basis.norm(dim=1, keepdim=True).clamp_min(1e-6))  # unit rows
    # Unit basis rows: E|w_oi|^2 ~ |c_oi|^2, and He wants 2 / Cin over the kept coefficients.
    std = (2.0 / max(1.0, conv.in_channels * d * max(density, 1e-3))) ** 0.5
    keep = torch.rand(conv.coefs.shape, generator=gen) < density
    conv.coefs.copy_(std * torch.randn(conv.coefs.shape, generator=gen) * keep)
    if conv.bias is not None:
        conv.bias.copy_(0.01 * torch.randn(conv.bias.shape, generator=gen))


def _fill_dense(layer: nn.Conv2d | nn.Linear, gen: torch.Generator) -> None:
    fan_in = layer.weight[0].numel()
    layer.weight.copy_((2.0 / max(1, fan_in)) ** 0.5 * torch.randn(layer.weight.shape, generator=gen))
    if layer.bias is not None:
        layer.bias.copy_(0.01 * torch.randn(layer.bias.shape, generator=gen))


def _calibrate_batchnorm(model: nn.Module, batch: torch.Tensor, gen: torch.Generator) -> None:
    """Set running statistics to those of ``batch`` (float64 forward on a copy), jittered by ±10%."""
    probe = copy.deepcopy(model).double().train()
    for bn in probe.modules():
        if isinstance(bn, _BN_TYPES):
            bn.momentum = 1.0  # running stats := this batch's stats
    probe(batch)
    pairs = zip(
        (m for m in model.modules() if isinstance(m, _BN_TYPES)),
        (m for m in probe.modules() if isinstance(m, _BN_TYPES)),
    )
    for bn, calibrated in pairs:
        if not bn.track_running_stats:
            continue
        mean = calibrated.running_mean.to(bn.running_mean.dtype)
        var = calibrated.running_var.to(bn.running_var.dtype)
        bn.running_mean.copy_(mean)
        # Channels fed a constant (all-zero layers, density 0) would calibrate to ~0 variance, and
        # 1/sqrt(var + eps) would then amplify float32 rounding ~300x per layer: no real network
        # looks like that, so variances are kept at 0.05 or more.
        bn.running_var.copy_((var * _uniform(var.shape, 0.9, 1.1, gen)).clamp_min(0.05))
