"""The ImageNet networks of the PENNI paper, AlexNet and ResNet50, laid out as torchvision defines them.

The module paths, and so the state_dict keys, are torchvision's (``features.0``, ``classifier.6``;
``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``), so a torchvision checkpoint loads into the dense
model (``penni=False``) and a PENNI checkpoint of it differs only in the factored convs. torchvision itself is
not imported and no weights are downloaded: the layouts are written out here.

With ``penni`` every k×k conv with k > 1 is a :class:`PenniConv2d`: AlexNet's 11×11, 5×5 and 3×3 convs and
ResNet50's 7×7 stem and 3×3 bottleneck convs. 1×1 convs and Linear layers stay dense, as in the reference's
ImageNet path. A conv keeps its bias where torchvision's has one (all of AlexNet's, none of ResNet50's).
ResNet50 is torchvision's v1.5: the stride of a downsampling bottleneck sits on its 3×3 conv.

Widths after shrinking (what ``config_from_state_dict`` reads back), as for the CIFAR networks:

- AlexNet: each conv's output width is its bias length; the hidden widths are those of ``classifier.1`` and
  ``classifier.4``.
- ResNet50: every conv's output width is that of its BatchNorm. A block's output is the width of
  ``downsample.1`` where it has one, else its input width.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from penni_deploy.errors import ModelLoadError
from penni_deploy.models.penni_conv import (
    DEFAULT_NUM_BASES,
    bases_for,
    biased_convs,
    conv_bases,
    entry_shape,
    make_conv,
    width_of,
)

logger = logging.getLogger(__name__)

# torchvision's AlexNet features: (index in ``features``, out width, kernel, stride, padding, max pool after).
# The indices are part of the state_dict keys: conv, ReLU[, MaxPool] take one index each.
ALEXNET_CONVS: tuple[tuple[int, int, int, int, int, bool], ...] = (
    (0, 64, 11, 4, 2, True),
    (3, 192, 5, 1, 2, True),
    (6, 384, 3, 1, 1, False),
    (8, 256, 3, 1, 1, False),
    (10, 256, 3, 1, 1, True),
)
ALEXNET_HIDDEN = (4096, 4096)
ALEXNET_POOL = 6  # AdaptiveAvgPool2d((6, 6)): the classifier sees 256·6·6 = 9216 features whatever the input

RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (inner width, blocks, first stride)
BOTTLENECK_EXPANSION = 4  # a block's output width is 4× its inner width


class AlexNet(nn.Module):
    """torchvision's AlexNet: five convs with bias and ReLU, three max pools, a 6×6 average pool, three Linears.

    Parameters
    ----------
    widths : sequence of 5 int, optional
        Output width of each conv (default 64, 192, 384, 256, 256).
    num_bases : int or mapping of str to int
        ``d`` for all PENNI convs, or per conv path (``"features.0"`` …); unlisted paths get 5.
    penni : bool
        Decompose the five convs (all are k×k with k > 1); if false they are dense ``nn.Conv2d``.
    hidden : pair of int
        Widths of ``classifier.1`` and ``classifier.4``.
    num_classes : int
        Logits.
    dropout : float
        Probability of both dropout layers (active in training mode only).
    """

    def __init__(
        self,
        widths: Sequence[int] | None = None,
        num_bases: int | Mapping[str, int] = DEFAULT_NUM_BASES,
        penni: bool = True,
        hidden: tuple[int, int] = ALEXNET_HIDDEN,
        num_classes: int = 1000,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        widths = [spec[1] for spec in ALEXNET_CONVS] if widths is None else list(widths)
        if len(widths) != len(ALEXNET_CONVS):
            raise ValueError(f"AlexNet needs {len(ALEXNET_CONVS)} conv widths, got {len(widths)}")
        layers: list[nn.Module] = []
        cin = 3
        for (idx, _, k, stride, pad, pool), cout in zip(ALEXNET_CONVS, widths):
            d = bases_for(num_bases, f"features.{idx}")
            layers += [make_conv(cin, cout, k, stride, pad, penni=penni, num_bases=d, bias=True), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((ALEXNET_POOL, ALEXNET_POOL))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(cin * ALEXNET_POOL * ALEXNET_POOL, hidden[0]),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.avgpool(self.features(x))  # (N, 256, 6, 6)
        return self.classifier(out.flatten(1))

    @staticmethod
    def config_from_state_dict(state_dict: Mapping[str, torch.Tensor], penni: bool = True) -> dict[str, Any]:
        """Constructor arguments that fit a (possibly shrunk) checkpoint; see the module docstring."""
        paths = [f"features.{spec[0]}" for spec in ALEXNET_CONVS]
        return {
            # Every AlexNet conv has a bias, and its length is the output width in either form.
            "widths": [entry_shape(state_dict, f"{p}.bias")[0] for p in paths],
            "num_bases": {p: conv_bases(state_dict, p, penni) for p in paths},
            "hidden": (width_of(state_dict, "classifier.1"), width_of(state_dict, "classifier.4")),
            "num_classes": width_of(state_dict, "classifier.6"),
        }


class Bottleneck(nn.Module):
    """``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + downsample(x))``, torchvision's v1.5 block.

    Parameters
    ----------
    in_planes : int
        Input width.
    widths : triple of int
        Output widths of ``conv1`` (1×1), ``conv2`` (3×3, strided) and ``conv3`` (1×1, the block's output).
    stride : int
        Stride of ``conv2`` and of the downsample conv.
    downsample : nn.Module or None
        The 1×1 conv + BatchNorm projection, or None for identity.
    penni : bool
        Decompose ``conv2`` (the 1×1 convs stay dense).
    num_bases : int
        ``d`` of ``conv2``.
    bias : triple of bool
        Whether ``conv1``, ``conv2``, ``conv3`` have a bias (torchvision's have none).
    """

    expansion = BOTTLENECK_EXPANSION

    def __init__(
        self,
        in_planes: int,
        widths: tuple[int, int, int],
        stride: int,
        downsample: nn.Module | None,
        *,
        penni: bool = True,
        num_bases: int = DEFAULT_NUM_BASES,
        bias: tuple[bool, bool, bool] = (False, False, False),
    ) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(in_planes, w1, kernel_size=1, bias=bias[0])
        self.bn1 = nn.BatchNorm2d(w1)
        self.conv2 = make_conv(w1, w2, 3, stride, 1, penni=penni, num_bases=num_bases, bias=bias[1])
        self.bn2 = nn.BatchNorm2d(w2)
        self.conv3 = nn.Conv2d(w2, w3, kernel_size=1, bias=bias[2])
        self.bn3 = nn.BatchNorm2d(w3)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """torchvision's ResNet50 (v1.5): 7×7 stem, max pool, bottleneck stages of 3, 4, 6, 3 blocks, ``fc``.

    Parameters
    ----------
    widths : mapping of str to int, optional
        Output width per conv path (``"conv1"``, ``"layer1.0.conv1"`` … ``"layer1.0.conv3"``); a block's
        ``conv3`` width is its output width. Unlisted convs keep the standard width.
    num_bases : int or mapping of str to int
        ``d`` for all PENNI convs, or per conv path (unlisted: 5).
    penni : bool
        Decompose the 7×7 stem and the 3×3 convs.
    num_classes : int
        Logits.
    biased : collection of str
        Paths of the convs that have a bias (none by default, as in torchvision).
    """

    def __init__(
        self,
        widths: Mapping[str, int] | None = None,
        num_bases: int | Mapping[str, int] = DEFAULT_NUM_BASES,
        penni: bool = True,
        num_classes: int = 1000,
        biased: Collection[str] = frozenset(),
    ) -> None:
        super().__init__()
        widths = dict(widths or {})
        stem = widths.get("conv1", 64)
        d = bases_for(num_bases, "conv1")
        self.conv1 = make_conv(3, stem, 7, 2, 3, penni=penni, num_bases=d, bias="conv1" in biased)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = stem
        for s, (planes, blocks, first_stride) in enumerate(RESNET50_STAGES, start=1):
            layer = []
            for b in range(blocks):
                path, stride = f"layer{s}.{b}", first_stride if b == 0 else 1
                block_widths = (
                    widths.get(f"{path}.conv1", planes),
                    widths.get(f"{path}.conv2", planes),
                    widths.get(f"{path}.conv3", planes * BOTTLENECK_EXPANSION),
                )
                out = block_widths[2]
                downsample = None
                if stride != 1 or in_planes != out:  # torchvision's rule
                    downsample = nn.Sequential(
                        nn.Conv2d(in_planes, out, 1, stride, bias=f"{path}.downsample.0" in biased),
                        nn.BatchNorm2d(out),
                    )
                bias = tuple(f"{path}.conv{i}" in biased for i in (1, 2, 3))
                d = bases_for(num_bases, f"{path}.conv2")
                layer.append(Bottleneck(in_planes, block_widths, stride, downsample, penni=penni, num_bases=d,
                                        bias=bias))
                in_planes = out
            self.add_module(f"layer{s}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # 224×224 -> 56×56
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # -> 2048×7×7
        return self.fc(self.avgpool(out).flatten(1))

    @staticmethod
    def config_from_state_dict(state_dict: Mapping[str, torch.Tensor], penni: bool = True) -> dict[str, Any]:
        """Constructor arguments that fit a (possibly shrunk) checkpoint; see the module docstring."""
        widths = {"conv1": width_of(state_dict, "bn1")}
        bases = {"conv1": conv_bases(state_dict, "conv1", penni)}
        stream = widths["conv1"]
        for s, (_, blocks, first_stride) in enumerate(RESNET50_STAGES, start=1):
            for b in range(blocks):
                path = f"layer{s}.{b}"
                has_downsample = f"{path}.downsample.0.weight" in state_dict
                if (first_stride if b == 0 else 1) != 1 and not has_downsample:
                    raise ModelLoadError(f"state_dict has no {path}.downsample.0.weight, needed by a strided block")
                out = width_of(state_dict, f"{path}.downsample.1") if has_downsample else stream
                found = width_of(state_dict, f"{path}.bn3")
                if found != out:
                    raise ModelLoadError(
                        f"state_dict entry '{path}.bn3.weight' has shape ({found},), expected ({out},): the "
                        "residual stream width must match on both sides of each addition"
                    )
                widths[f"{path}.conv1"] = width_of(state_dict, f"{path}.bn1")
                widths[f"{path}.conv2"] = width_of(state_dict, f"{path}.bn2")
                widths[f"{path}.conv3"] = out
                bases[f"{path}.conv2"] = conv_bases(state_dict, f"{path}.conv2", penni)
                stream = out
        paths = list(widths) + [p.replace(".conv3", ".downsample.0") for p in widths if p.endswith(".conv3")]
        return {
            "widths": widths,
            "num_bases": bases,
            "num_classes": width_of(state_dict, "fc"),
            "biased": biased_convs(state_dict, paths),
        }
