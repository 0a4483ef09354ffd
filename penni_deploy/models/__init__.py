"""The networks of the PENNI paper (CIFAR and ImageNet), rebuilt without the reference code, and the PENNI conv layer.

``build_model("vgg16", state_dict)`` reads per-layer widths and ``d`` from a (shrunk) reference checkpoint,
builds the matching network and loads the checkpoint strictly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from penni_deploy.errors import ModelLoadError
from penni_deploy.models.imagenet import AlexNet, Bottleneck, ResNet50
from penni_deploy.models.penni_conv import (
    DEFAULT_NUM_BASES,
    FORMS,
    PenniConv2d,
    load_state_dict_checked,
)
from penni_deploy.models.random_weights import randomize_penni_weights_
from penni_deploy.models.resnet_cifar import (
    BasicBlock,
    OptionAShortcut,
    ResNet18,
    ResNet20,
    ResNet56,
)
from penni_deploy.models.vgg_cifar import VGG16

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_NUM_BASES",
    "FORMS",
    "INPUT_SHAPES",
    "AlexNet",
    "BasicBlock",
    "Bottleneck",
    "OptionAShortcut",
    "PenniConv2d",
    "ResNet18",
    "ResNet20",
    "ResNet50",
    "ResNet56",
    "VGG16",
    "build_model",
    "randomize_penni_weights_",
]

logger = logging.getLogger(__name__)

# Name -> model class. Each class takes (widths=None, num_bases=5, penni=True, ...) and has a static
# config_from_state_dict(state_dict, penni) returning the constructor arguments that fit a checkpoint.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "alexnet": AlexNet,
    "resnet18": ResNet18,
    "resnet20": ResNet20,
    "resnet50": ResNet50,
    "resnet56": ResNet56,
    "vgg16": VGG16,
}

# Name -> the natural input shape (batch 1) of each architecture: CIFAR-10 32×32, ImageNet 224×224.
INPUT_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "alexnet": (1, 3, 224, 224),
    "resnet18": (1, 3, 32, 32),
    "resnet20": (1, 3, 32, 32),
    "resnet50": (1, 3, 224, 224),
    "resnet56": (1, 3, 32, 32),
    "vgg16": (1, 3, 32, 32),
}


def build_model(
    arch: str,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    num_bases: int = DEFAULT_NUM_BASES,
    penni: bool = True,
) -> nn.Module:
    """Build a network by name, optionally fitted to and loaded from a state_dict.

    Parameters
    ----------
    arch : str
        A key of :data:`ARCHITECTURES` (case-insensitive).
    state_dict : mapping of str to Tensor, optional
        A reference checkpoint, possibly shrunk. Widths come from the BatchNorm after each conv, ``d`` from
        each ``basis``; a uniform ``module.`` prefix (DataParallel) is dropped.
    num_bases : int
        ``d`` of every PENNI conv when no state_dict is given; ignored otherwise.
    penni : bool
        Decompose the k×k convs (the state_dict must then hold ``basis``/``coefs``, else dense ``weight``).

    Returns
    -------
    nn.Module
        The model, in eval mode.

    Raises
    ------
    ModelLoadError
        Unknown ``arch``, or a state_dict that does not fit it; the message names the offending key.
    """
    cls = ARCHITECTURES.get(arch.lower())
    if cls is None:
        raise ModelLoadError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    if state_dict is None:
        return cls(num_bases=num_bases, penni=penni).eval()
    state_dict = _strip_data_parallel_prefix(state_dict)
    config = cls.config_from_state_dict(state_dict, penni=penni)
    try:
        model = cls(**config, penni=penni)
    except ValueError as exc:  # a width combination the architecture cannot express
        raise ModelLoadError(f"state_dict does not fit {arch}: {exc}") from exc
    logger.info("built %s from a state_dict of %d entries", arch, len(state_dict))
    return load_state_dict_checked(model, state_dict).eval()


def _strip_data_parallel_prefix(state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict
