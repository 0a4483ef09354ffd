"""Prune: zero every coefficient smaller than one standard deviation of its layer's coefficients.

Returns the masks, which fine-tuning uses to hold the pruned entries at exactly zero.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.penni_conv import PenniConv2d


@torch.no_grad()
def prune_coefficients_(model: nn.Module, threshold_std: float = 1.0) -> dict[str, torch.Tensor]:
    """Zero ``|c| < threshold_std · std(C)`` per PENNI layer, in place; returns ``{param name: keep mask}``."""
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, PenniConv2d) and module.coefs.numel():
            keep = module.coefs.abs() >= threshold_std * module.coefs.std()
            module.coefs.mul_(keep)
            masks[f"{name}.coefs" if name else "coefs"] = keep
    return masks


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Re-zero the pruned coefficients (after an optimizer step moved them)."""
    model = getattr(model, "module", model)  # names are those of the unwrapped model, not of a DDP wrapper
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        params[name].mul_(keep)
