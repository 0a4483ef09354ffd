"""Shrink is exact: the shrunk model computes what the pruned model computes."""

import copy

import numpy as np
import pytest
import torch
from model_helpers import random_penni_model

from penni_deploy.method.shrink import residual_segments, shrink_model_
from penni_deploy.models import PenniConv2d, build_model, randomize_penni_weights_


def unread_stream_channels_(model, channels=(1, 4)):
    """Make a few residual-stream channels unread by every reader of their segment."""
    with torch.no_grad():
        for _, readers in residual_segments(model):
            for parent, name in readers:
                layer = getattr(parent, name)
                if isinstance(layer, PenniConv2d):
                    layer.coefs.view(layer.out_channels, layer.in_channels, -1)[:, list(channels)] = 0
                elif isinstance(layer, torch.nn.Linear):
                    layer.weight[:, list(channels)] = 0
                else:
                    layer.weight[:, list(channels)] = 0
    return model


def structured_sparsity_(model, seed=0):
    """Zero whole kernels rows/columns and bases the way pruning leaves them, and push some BN shifts
    negative (so zero channels may go) and others positive (so they must stay)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PenniConv2d):
                c = m.coefs.view(m.out_channels, m.in_channels, -1)
                c[torch.rand(m.out_channels, generator=gen) < 0.3] = 0  # dead output channels
                c[:, torch.rand(m.in_channels, generator=gen) < 0.3] = 0  # unread input channels
                c[:, :, 0] = 0  # basis 0 unused everywhere
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.copy_(torch.where(torch.rand(m.num_features, generator=gen) < 0.5, -1.0, 0.2)
                             * torch.rand(m.num_features, generator=gen))
    return model


SIZES = {"vgg16": 32, "resnet56": 32, "resnet18": 32, "resnet50": 64}


@pytest.mark.parametrize("arch", SIZES)
def test_shrink_is_exact_and_removes_things(arch):
    size = SIZES[arch]
    model = structured_sparsity_(randomize_penni_weights_(build_model(arch), 0.5, seed=1, input_shape=(2, 3, size, size)))
    unread_stream_channels_(model)
    stream_widths = [getattr(w[0][0], w[0][1]).out_channels for w, _ in residual_segments(model)]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(x)
    params_before = sum(p.numel() for p in model.parameters())
    shrunk = copy.deepcopy(model)
    stats = shrink_model_(shrunk)
    with torch.inference_mode():
        after = shrunk(x)
    assert stats.bases_removed > 0 and stats.channels_removed > 0
    if stream_widths:  # ResNet18 / ResNet50: every residual stream lost the two unread channels
        assert [getattr(w[0][0], w[0][1]).out_channels for w, _ in residual_segments(shrunk)] == \
            [width - 2 for width in stream_widths]
    assert sum(p.numel() for p in shrunk.parameters()) < params_before
    scale = before.abs().max()
    assert (after - before).abs().max() <= 1e-5 * scale
    # The shrunk checkpoint rebuilds from its own state_dict (widths and d read from the shapes).
    rebuilt = build_model(arch, shrunk.state_dict())
    with torch.inference_mode():
        np.testing.assert_allclose(rebuilt(x).numpy(), after.numpy(), rtol=0, atol=1e-6 * float(scale))


def test_zero_channel_with_positive_bn_shift_is_kept():
    model = random_penni_model("vgg16", 1.0, seed=2)
    conv, bn = model.features[0], model.features[1]
    with torch.no_grad():
        conv.coefs.view(conv.out_channels, 3, -1)[5] = 0
        bn.bias[5] = 10.0  # ReLU(BN(0)) > 0: a constant map the next conv reads
    stats = shrink_model_(model)
    assert model.features[0].out_channels == 64 and stats.channels_removed == 0
