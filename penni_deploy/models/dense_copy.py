"""Turn a PENNI model into the same network with ordinary dense convolutions.

Used as the honest baseline: coefficients multiplied back into k×k kernels (``W = C·B``) in
``nn.Conv2d`` layers, which is what the network costs without PENNI.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .penni_conv import PenniConv2d


def to_dense_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ``PenniConv2d`` replaced by an equivalent ``nn.Conv2d``."""
    dense = copy.deepcopy(model)
    for name, module in list(dense.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, PenniConv2d):
                setattr(module, child_name, _as_conv(child))
    return dense.eval()


def to_two_stage_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose PENNI layers run the exact two-stage form."""
    staged = copy.deepcopy(model)
    for module in staged.modules():
        if isinstance(module, PenniConv2d):
            module.form = "two_stage"
    return staged.eval()


def has_penni_layers(model: nn.Module) -> bool:
    return any(isinstance(m, PenniConv2d) for m in model.modules())


@torch.no_grad()
def _as_conv(layer: PenniConv2d) -> nn.Conv2d:
    weight = layer.dense_weight()  # (Cout, Cin, kh, kw)
    cout, cin, kh, kw = weight.shape
    conv = nn.Conv2d(cin, cout, (kh, kw), stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                     bias=layer.bias is not None)
    conv.weight.copy_(weight)
    if layer.bias is not None:
        conv.bias.copy_(layer.bias)
    return conv
