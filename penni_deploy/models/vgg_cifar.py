"""CIFAR VGG16 with BatchNorm, laid out like the reference checkpoints (``features.<idx>``, ``classifer``).

Every 3×3 convolution is a :class:`PenniConv2d` when ``penni`` is true. Widths and ``d`` may differ per
layer, as they do after the reference's ``shrink``: :meth:`VGG16.config_from_state_dict` reads them back.
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

# Output widths of the 13 convs, "M" a 2×2 max pool. The resulting indices are part of the state_dict keys.
VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


def vgg16_conv_paths() -> list[str]:
    """Module paths of the 13 convolutions: ``features.0``, ``features.3``, ... ``features.40``."""
    paths, idx = [], 0
    for item in VGG16_LAYOUT:
        if item == "M":
            idx += 1
        else:
            paths.append(f"features.{idx}")
            idx += 3  # conv, BN, ReLU
    return paths


class VGG16(nn.Module):
    """CIFAR VGG16: 13 conv+BN+ReLU in five pooled stages, spatial mean, 3-layer MLP head with BatchNorm1d.

    Parameters
    ----------
    widths : sequence of 13 int, optional
        Output width of each conv (default 64 … 512).
    num_bases : int or mapping of str to int
        ``d`` for all PENNI convs, or per conv path (``"features.0"`` …); unlisted paths get 5.
    penni : bool
        Decompose the 3×3 convs; if false they are dense ``nn.Conv2d``.
    hidden : pair of int
        Widths of ``classifer.0`` and ``classifer.3``.
    num_classes : int
        Logits.
    biased : collection of str
        Paths of the convs that have a bias (none by default, as in the reference).
    """

    def __init__(
        self,
        widths: Sequence[int] | None = None,
        num_bases: int | Mapping[str, int] = DEFAULT_NUM_BASES,
        penni: bool = True,
        hidden: tuple[int, int] = (512, 512),
        num_classes: int = 10,
        biased: Collection[str] = frozenset(),
    ) -> None:
        super().__init__()
        default = [w for w in VGG16_LAYOUT if w != "M"]
        widths = list(default if widths is None else widths)
        if len(widths) != len(default):
            raise ValueError(f"VGG16 needs {len(default)} conv widths, got {len(widths)}")
        layers: list[nn.Module] = []
        cin, conv_idx = 3, 0
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            cout = widths[conv_idx]
            path = f"features.{len(layers)}"
            d = bases_for(num_bases, path)
            conv = make_conv(cin, cout, 3, 1, 1, penni=penni, num_bases=d, bias=path in biased)
            layers += [conv, nn.BatchNorm2d(cout), nn.ReLU()]
            cin, conv_idx = cout, conv_idx + 1
        self.features = nn.Sequential(*layers)
        # "classifer" (sic) is the reference's spelling, kept so that its checkpoints load.
        self.classifer = nn.Sequential(
            nn.Linear(cin, hidden[0]),
            nn.BatchNorm1d(hidden[0]),
            nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]),
            nn.BatchNorm1d(hidden[1]),
            nn.ReLU(),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.features(x)
        feat = torch.mean(feat, dim=(3, 2))  # (N, C, H, W) -> (N, C); H = W = 1 for 32×32 inputs
        return self.classifer(feat)

    @staticmethod
    def config_from_state_dict(state_dict: Mapping[str, torch.Tensor], penni: bool = True) -> dict[str, Any]:
        """Constructor arguments that fit a (possibly shrunk) checkpoint.

        Each conv's width is that of the BatchNorm after it, ``d`` is its ``basis.shape[0]``, and the head
        sizes come from the Linear weights. The caller's strict load then checks every other shape.
        """
        paths = vgg16_conv_paths()
        widths, bases = [], {}
        for path in paths:
            idx = int(path.split(".")[1])
            widths.append(width_of(state_dict, f"features.{idx + 1}"))
            bases[path] = conv_bases(state_dict, path, penni)
        h0 = entry_shape(state_dict, "classifer.0.weight")[0]
        h1 = entry_shape(state_dict, "classifer.3.weight")[0]
        num_classes = entry_shape(state_dict, "classifer.6.weight")[0]
        if min(widths) < 1:
            raise ModelLoadError(f"state_dict has a VGG16 conv of width 0 (widths {widths}); not supported")
        logger.debug("VGG16 widths from state_dict: %s, bases %s", widths, bases)
        return {
            "widths": widths,
            "num_bases": bases,
            "hidden": (h0, h1),
            "num_classes": num_classes,
            "biased": biased_convs(state_dict, paths),
        }
