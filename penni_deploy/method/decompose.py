"""Decompose: every k×k conv (k > 1, groups 1) becomes a PENNI layer, by truncated SVD.

The (Cout·Cin)×k² kernel matrix is factored into d shared bases and per-kernel coefficients
(``PenniConv2d.from_conv``: the best rank-d approximation, uncentred). The first conv is included,
as in the paper; 1×1 convs and Linear layers stay dense.
"""

from __future__ import annotations

import copy

from torch import nn

from ..models.penni_conv import DEFAULT_NUM_BASES, PenniConv2d


def decompose_model(model: nn.Module, num_bases: int = DEFAULT_NUM_BASES) -> nn.Module:
    """A copy of ``model`` whose k×k convs are ``PenniConv2d`` layers with ``num_bases`` bases."""
    decomposed = copy.deepcopy(model)
    for module in list(decomposed.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d) and child.groups == 1 and child.kernel_size[0] * child.kernel_size[1] > 1:
                setattr(module, name, PenniConv2d.from_conv(child, num_bases))
    return decomposed
