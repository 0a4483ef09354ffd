"""Generated example models, so the compiler can be tried without a trained checkpoint.

They have random weights (labelled as such everywhere they appear): they show speed and exactness,
not accuracy. The default is CIFAR ResNet18 with 97% of the PENNI coefficients zero, the sparsity
of the paper's headline model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Example:
    arch: str
    density: float
    description: str


EXAMPLES: dict[str, Example] = {
    "resnet18-random97": Example("resnet18", 0.03, "CIFAR ResNet18, PENNI d=5, RANDOM weights, 97% of coefficients zero"),
    "resnet56-random97": Example("resnet56", 0.03, "CIFAR ResNet56, PENNI d=5, RANDOM weights, 97% of coefficients zero"),
    "vgg16-random97": Example("vgg16", 0.03, "CIFAR VGG16, PENNI d=5, RANDOM weights, 97% of coefficients zero"),
    "resnet50-random95": Example("resnet50", 0.05,
                                 "ImageNet ResNet50 (224×224), PENNI d=5, RANDOM weights, 95% of coefficients zero"),
    "alexnet-random95": Example("alexnet", 0.05,
                                "ImageNet AlexNet (224×224), PENNI d=5, RANDOM weights, 95% of coefficients zero"),
}

DEFAULT_EXAMPLE = "resnet18-random97"


def make_example(name: str, seed: int = 0) -> nn.Module:
    """Build example ``name`` deterministically (same seed, same weights)."""
    from ..errors import PenniError
    from . import INPUT_SHAPES, build_model, randomize_penni_weights_

    try:
        example = EXAMPLES[name]
    except KeyError:
        raise PenniError(f"unknown example {name!r}; choose one of: {', '.join(EXAMPLES)}") from None
    model = build_model(example.arch)
    # BatchNorm statistics from a batch of two of the network's own input size.
    calibration = (2, *INPUT_SHAPES[example.arch][1:])
    randomize_penni_weights_(model, example.density, seed=seed, input_shape=calibration)
    return model.eval()


