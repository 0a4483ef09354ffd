"""Shrink: remove the bases and channels no coefficient uses, exactly.

Two kinds of removal, repeated until nothing changes:

- **Bases.** A basis no coefficient of its layer uses is dropped (its row of ``basis``, its column
  of ``coefs``). Always exact.
- **Channels between a producer and its only consumer** (``conv → BN → ReLU → conv``: VGG's
  consecutive convs, the inner channels of ResNet basic and bottleneck blocks). Channel j goes when
  the consumer never reads it (all its coefficients or weights on input j are zero), or when the
  producer's row j is all zero and ``ReLU(BN(0))_j`` is exactly 0. A zero row whose BN shift makes
  a nonzero constant is *kept*: the consumer sees that constant inside the image but zeros in its
  padded border, so folding it into a bias would not be exact.

- **Residual-stream channels** (ResNet18, ResNet50): a stream segment runs from one projection
  shortcut (or the stem) to the next; every block in it adds into the same channels. A channel goes
  when *no* reader of the segment uses it — each block's first conv, the next projection shortcut,
  or the final Linear — so removing it from every writer (each block's last conv and BN, the
  projection, the stem) changes nothing downstream. ResNet56/ResNet20 keep their streams: their
  option-A shortcuts fix each channel's position by zero padding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..models.penni_conv import PenniConv2d

logger = logging.getLogger(__name__)


@dataclass
class ShrinkStats:
    bases_removed: int = 0
    channels_removed: int = 0


def shrink_model_(model: nn.Module) -> ShrinkStats:
    """Shrink ``model`` in place (see the module docstring); returns what was removed."""
    stats = ShrinkStats()
    changed = True
    while changed:
        changed = False
        for module in model.modules():
            if isinstance(module, PenniConv2d):
                removed = _drop_unused_bases(module)
                stats.bases_removed += removed
                changed |= removed > 0
        for parent, producer, bn, consumer in _channel_pairs(model):
            removed = _drop_unused_channels(parent, producer, bn, consumer)
            stats.channels_removed += removed
            changed |= removed > 0
        for writers, readers in list(residual_segments(model)):
            removed = _drop_unread_stream_channels(writers, readers)
            stats.channels_removed += removed
            changed |= removed > 0
    logger.info("shrink: removed %d bases and %d channels", stats.bases_removed, stats.channels_removed)
    return stats


def _coefs3(layer: PenniConv2d) -> torch.Tensor:
    return layer.coefs.detach().reshape(layer.out_channels, layer.in_channels, -1)  # (Cout, Cin, d)


@torch.no_grad()
def _drop_unused_bases(layer: PenniConv2d) -> int:
    used = (layer.coefs != 0).any(dim=0)  # (d,)
    if used.all() or not used.any():
        return 0  # keep at least one basis: an all-zero layer still needs a well-formed shape
    layer.basis = nn.Parameter(layer.basis[used].clone())
    layer.coefs = nn.Parameter(layer.coefs[:, used].clone())
    return int((~used).sum())


def _channel_pairs(model: nn.Module):
    """(parent, producer name, bn name or None, consumer name) for channels with one consumer."""
    from ..models.vgg_cifar import VGG16

    for module in model.modules():
        names = dict(module.named_children())
        if {"conv1", "bn1", "conv2", "bn2", "conv3"} <= names.keys():  # bottleneck
            yield module, "conv1", "bn1", "conv2"
            yield module, "conv2", "bn2", "conv3"
        elif {"conv1", "bn1", "conv2"} <= names.keys() and ("shortcut" in names or "downsample" in names):
            yield module, "conv1", "bn1", "conv2"  # basic block's inner channels
    if isinstance(model, VGG16):
        convs = [i for i, m in enumerate(model.features) if isinstance(m, (nn.Conv2d, PenniConv2d))]
        for a, b in zip(convs, convs[1:]):
            yield model.features, str(a), str(a + 1), str(b)


def _reads(consumer: nn.Module) -> torch.Tensor:
    """Which input channels the consumer's weights touch at all, shape (Cin,)."""
    if isinstance(consumer, PenniConv2d):
        return (_coefs3(consumer) != 0).any(dim=2).any(dim=0)
    if isinstance(consumer, nn.Linear):  # after global pooling: input feature j is channel j
        return (consumer.weight.detach() != 0).any(dim=0)
    return (consumer.weight.detach() != 0).flatten(2).any(dim=2).any(dim=0)


def residual_segments(model: nn.Module):
    """``(writers, readers)`` of each residual-stream segment of a ResNet18 or ResNet50.

    ``writers`` are ``(parent, conv name, bn name)`` whose outputs are summed into the stream;
    ``readers`` are ``(parent, name)`` of the convs (or the final Linear) that read it.
    """
    from ..models.imagenet import ResNet50
    from ..models.resnet_cifar import ResNet18

    if not isinstance(model, (ResNet18, ResNet50)):
        return
    writers, readers = [(model, "conv1", "bn1")], []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            projection = getattr(block, "downsample", None) or getattr(block, "shortcut", None)
            readers.append((block, "conv1"))
            if projection is not None and len(projection) == 2:  # conv + BN: the stream changes here
                readers.append((projection, "0"))
                yield writers, readers
                writers, readers = [(projection, "0", "1")], []
            last = ("conv3", "bn3") if hasattr(block, "conv3") else ("conv2", "bn2")
            writers.append((block, *last))
    readers.append((model, "fc" if isinstance(model, ResNet50) else "linear"))
    yield writers, readers


@torch.no_grad()
def _drop_unread_stream_channels(writers, readers) -> int:
    keep = torch.zeros(getattr(writers[0][0], writers[0][1]).out_channels, dtype=torch.bool)
    for parent, name in readers:
        keep |= _reads(getattr(parent, name))
    if keep.all() or not keep.any():
        return 0
    for parent, conv_name, bn_name in writers:
        setattr(parent, conv_name, _slice_outputs(getattr(parent, conv_name), keep))
        setattr(parent, bn_name, _slice_bn(getattr(parent, bn_name), keep))
    for parent, name in readers:
        setattr(parent, name, _slice_inputs(getattr(parent, name), keep))
    return int((~keep).sum())


def _zero_rows(producer: nn.Module) -> torch.Tensor:
    """Output channels the producer computes as exactly zero, before BN, shape (Cout,)."""
    if isinstance(producer, PenniConv2d):
        zero = ~(_coefs3(producer) != 0).any(dim=2).any(dim=1)
    else:
        zero = ~(producer.weight.detach() != 0).flatten(1).any(dim=1)
    if producer.bias is not None:
        zero &= producer.bias.detach() == 0
    return zero


def _relu_bn_of_zero(bn: nn.BatchNorm2d | None, channels: int) -> torch.Tensor:
    if bn is None:
        return torch.zeros(channels)
    shift = bn.bias.detach() - bn.running_mean * bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return torch.relu(shift)


@torch.no_grad()
def _drop_unused_channels(parent: nn.Module, producer_name: str, bn_name: str | None, consumer_name: str) -> int:
    producer = getattr(parent, producer_name)
    bn = getattr(parent, bn_name) if bn_name is not None else None
    consumer = getattr(parent, consumer_name)
    channels = producer.out_channels
    dead = _zero_rows(producer) & (_relu_bn_of_zero(bn, channels) == 0)
    keep = _reads(consumer) & ~dead
    if keep.all() or not keep.any():
        return 0  # nothing to drop, or keep one channel so every layer keeps a valid shape
    setattr(parent, producer_name, _slice_outputs(producer, keep))
    if bn is not None:
        setattr(parent, bn_name, _slice_bn(bn, keep))
    setattr(parent, consumer_name, _slice_inputs(consumer, keep))
    return int((~keep).sum())


def _slice_outputs(layer: nn.Module, keep: torch.Tensor) -> nn.Module:
    if isinstance(layer, PenniConv2d):
        coefs = _coefs3(layer)[keep]
        new = PenniConv2d(layer.in_channels, int(keep.sum()), layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, layer.num_bases, layer.bias is not None)
        new.basis.copy_(layer.basis)
        new.coefs.copy_(coefs.reshape(-1, layer.num_bases))
        if layer.bias is not None:
            new.bias.copy_(layer.bias[keep])
        new.form = layer.form
        return new
    new = nn.Conv2d(layer.in_channels, int(keep.sum()), layer.kernel_size, layer.stride, layer.padding,
                    layer.dilation, bias=layer.bias is not None)
    new.weight.copy_(layer.weight[keep])
    if layer.bias is not None:
        new.bias.copy_(layer.bias[keep])
    return new


def _slice_inputs(layer: nn.Module, keep: torch.Tensor) -> nn.Module:
    if isinstance(layer, nn.Linear):
        new = nn.Linear(int(keep.sum()), layer.out_features, bias=layer.bias is not None)
        new.weight.copy_(layer.weight[:, keep])
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
        return new
    if isinstance(layer, PenniConv2d):
        coefs = _coefs3(layer)[:, keep]
        new = PenniConv2d(int(keep.sum()), layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, layer.num_bases, layer.bias is not None)
        new.basis.copy_(layer.basis)
        new.coefs.copy_(coefs.reshape(-1, layer.num_bases))
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
        new.form = layer.form
        return new
    new = nn.Conv2d(int(keep.sum()), layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                    layer.dilation, bias=layer.bias is not None)
    new.weight.copy_(layer.weight[:, keep])
    if layer.bias is not None:
        new.bias.copy_(layer.bias)
    return new


def _slice_bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(int(keep.sum()), eps=bn.eps, momentum=bn.momentum)
    new.weight.copy_(bn.weight[keep])
    new.bias.copy_(bn.bias[keep])
    new.running_mean.copy_(bn.running_mean[keep])
    new.running_var.copy_(bn.running_var[keep])
    new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)
