"""CIFAR ResNet18 (1×1 projection shortcuts), and ResNet20 and ResNet56 (option-A zero-padding shortcuts).

Module paths follow the reference checkpoints: ``conv1``/``bn1`` stem, ``layerS.B`` basic blocks with
``conv1, bn1, conv2, bn2, shortcut``, and ``linear``. Every 3×3 conv is a :class:`PenniConv2d` when ``penni``
is true; the 1×1 shortcut convs of ResNet18 stay dense.

Widths after shrinking (what ``config_from_state_dict`` reads back):

- ResNet18: every block's inner width (``conv1``/``bn1``) and output width may change freely. The output of a
  block with a projection shortcut is the width of ``shortcut.1``; a block without one keeps its input width.
- ResNet20/ResNet56: every block's inner width may change. The residual stream has one width per stage (the
  stem's for ``layer1``, read from ``bn1``; the ``bn2`` of every block in the stage), and an option-A block must
  have ``out = in + 2 * (out // 4)`` as in the reference's padding (``out // 4`` zero channels per side).
  Other residual widths are refused with a ModelLoadError, since option A could not express them.

ResNet20 and ResNet56 are one family (He et al. 2016, section 4.2): depth ``6n + 2`` with ``n`` blocks per
stage. They differ only in ``n``, so both are :class:`OptionAResNet` with their own stage table.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
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

RESNET18_STAGES = ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))  # (width, blocks, first stride)


def option_a_stages(depth: int) -> tuple[tuple[int, int, int], ...]:
    """Stage table ``(width, blocks, first stride)`` of the CIFAR option-A ResNet of ``depth = 6n + 2``."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR option-A ResNet has depth 6n + 2 (20, 32, 44, 56, 110 ...), got {depth}")
    n = (depth - 2) // 6
    return ((16, n, 1), (32, n, 2), (64, n, 2))


RESNET20_STAGES = option_a_stages(20)
RESNET56_STAGES = option_a_stages(56)


class OptionAShortcut(nn.Module):
    """Parameter-free downsampling shortcut: keep every second row and column, zero-pad channels.

    Parameters
    ----------
    pad : int
        Zero channels added before and after the existing ones (the reference uses ``planes // 4``).
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = int(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, C + 2*pad, ceil(H/2), ceil(W/2))
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, the block of both networks.

    The forward uses only the five submodules, so an unpickled reference block runs as one of these.

    Parameters
    ----------
    in_planes, mid_planes, out_planes : int
        Input, inner (``conv1`` output) and output widths.
    stride : int
        Stride of ``conv1`` and of the shortcut.
    shortcut : nn.Module
        An empty ``nn.Sequential`` for identity, else the projection or option-A module.
    penni : bool
        Decompose the two 3×3 convs.
    num_bases : pair of int
        ``d`` of ``conv1`` and ``conv2``.
    bias : pair of bool
        Whether ``conv1`` and ``conv2`` have a bias.
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        mid_planes: int,
        out_planes: int,
        stride: int,
        shortcut: nn.Module,
        *,
        penni: bool = True,
        num_bases: tuple[int, int] = (DEFAULT_NUM_BASES, DEFAULT_NUM_BASES),
        bias: tuple[bool, bool] = (False, False),
    ) -> None:
        super().__init__()
        self.conv1 = make_conv(in_planes, mid_planes, 3, stride, 1, penni=penni, num_bases=num_bases[0], bias=bias[0])
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = make_conv(mid_planes, out_planes, 3, 1, 1, penni=penni, num_bases=num_bases[1], bias=bias[1])
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _projection(in_planes: int, out_planes: int, stride: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=bias), nn.BatchNorm2d(out_planes)
    )


def _option_a(in_planes: int, out_planes: int, stride: int, path: str) -> nn.Module:
    pad = out_planes // 4
    if stride != 2 or in_planes + 2 * pad != out_planes:
        raise ValueError(
            f"{path}: option-A shortcut cannot map {in_planes} channels (stride {stride}) to {out_planes}: it "
            f"needs stride 2 and out = in + 2 * (out // 4)"
        )
    return OptionAShortcut(pad)


class _CifarResNet(nn.Module):
    """Stem, stages of basic blocks, global average pool, ``linear``: shared by both networks."""

    def __init__(
        self,
        stages: tuple[tuple[int, int, int], ...],
        stem_width: int,
        widths: Mapping[str, int],
        num_bases: int | Mapping[str, int],
        penni: bool,
        num_classes: int,
        projection: bool,
        biased: Collection[str],
    ) -> None:
        super().__init__()
        d = bases_for(num_bases, "conv1")
        self.conv1 = make_conv(3, stem_width, 3, 1, 1, penni=penni, num_bases=d, bias="conv1" in biased)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_planes = stem_width
        for s, (planes, blocks, first_stride) in enumerate(stages, start=1):
            layer = []
            for b in range(blocks):
                path, stride = f"layer{s}.{b}", first_stride if b == 0 else 1
                mid = widths.get(f"{path}.conv1", planes)
                out = widths.get(f"{path}.conv2", planes)
                if stride == 1 and in_planes == out:
                    shortcut: nn.Module = nn.Sequential()
                elif projection:
                    shortcut = _projection(in_planes, out, stride, f"{path}.shortcut.0" in biased)
                else:
                    shortcut = _option_a(in_planes, out, stride, path)
                bases = (bases_for(num_bases, f"{path}.conv1"), bases_for(num_bases, f"{path}.conv2"))
                bias = (f"{path}.conv1" in biased, f"{path}.conv2" in biased)
                block = BasicBlock(in_planes, mid, out, stride, shortcut, penni=penni, num_bases=bases, bias=bias)
                layer.append(block)
                in_planes = out
            self.add_module(f"layer{s}", nn.Sequential(*layer))
        self.linear = nn.Linear(in_planes, num_classes)


class ResNet18(_CifarResNet):
    """CIFAR ResNet18: widths 64/128/256/512, two blocks per stage, 1×1 projection shortcuts, pool 4.

    Parameters
    ----------
    widths : mapping of str to int, optional
        Output width per conv path (``"conv1"``, ``"layer2.0.conv1"``, ``"layer2.0.conv2"`` …); a block's
        ``conv2`` width is its output width. Unlisted convs keep the standard width.
    num_bases : int or mapping of str to int
        ``d`` for all PENNI convs, or per conv path (unlisted: 5).
    penni : bool
        Decompose the 3×3 convs.
    num_classes : int
        Logits.
    biased : collection of str
        Paths of the convs that have a bias (none by default).
    """

    def __init__(
        self,
        widths: Mapping[str, int] | None = None,
        num_bases: int | Mapping[str, int] = DEFAULT_NUM_BASES,
        penni: bool = True,
        num_classes: int = 10,
        biased: Collection[str] = frozenset(),
    ) -> None:
        widths = dict(widths or {})
        stem = widths.get("conv1", RESNET18_STAGES[0][0])
        super().__init__(RESNET18_STAGES, stem, widths, num_bases, penni, num_classes, projection=True, biased=biased)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)  # 512×4×4 -> 512×1×1 for 32×32 inputs
        return self.linear(out.flatten(1))

    @staticmethod
    def config_from_state_dict(state_dict: Mapping[str, torch.Tensor], penni: bool = True) -> dict[str, Any]:
        """Constructor arguments that fit a (possibly shrunk) checkpoint; see the module docstring."""
        widths = {"conv1": width_of(state_dict, "bn1")}
        bases = {"conv1": conv_bases(state_dict, "conv1", penni)}
        stream = widths["conv1"]
        for s, (_, blocks, first_stride) in enumerate(RESNET18_STAGES, start=1):
            for b in range(blocks):
                path = f"layer{s}.{b}"
                has_projection = f"{path}.shortcut.0.weight" in state_dict
                if (first_stride if b == 0 else 1) != 1 and not has_projection:
                    raise ModelLoadError(f"state_dict has no {path}.shortcut.0.weight, needed by a stride-2 block")
                out = width_of(state_dict, f"{path}.shortcut.1") if has_projection else stream
                _check_width(state_dict, f"{path}.bn2", out)
                widths[f"{path}.conv1"] = width_of(state_dict, f"{path}.bn1")
                widths[f"{path}.conv2"] = out
                for conv in ("conv1", "conv2"):
                    bases[f"{path}.{conv}"] = conv_bases(state_dict, f"{path}.{conv}", penni)
                stream = out
        paths = list(widths) + [p.replace(".conv2", ".shortcut.0") for p in widths if p.endswith(".conv2")]
        return {
            "widths": widths,
            "num_bases": bases,
            "num_classes": _num_classes(state_dict),
            "biased": biased_convs(state_dict, paths),
        }


class OptionAResNet(_CifarResNet):
    """CIFAR ResNet of depth ``6n + 2``: widths 16/32/64, ``n`` blocks per stage, option-A shortcuts, pool 8.

    Not built directly: a subclass sets :attr:`stages` (see :class:`ResNet20`, :class:`ResNet56`).

    Parameters
    ----------
    widths : mapping of str to int, optional
        Output width per conv path, as for :class:`ResNet18`; residual widths must satisfy option A (see the
        module docstring), else ValueError.
    num_bases : int or mapping of str to int
        ``d`` for all PENNI convs, or per conv path (unlisted: 5).
    penni : bool
        Decompose the 3×3 convs.
    num_classes : int
        Logits.
    biased : collection of str
        Paths of the convs that have a bias (none by default).
    """

    #: ``(width, blocks, first stride)`` per stage, set by each subclass.
    stages: ClassVar[tuple[tuple[int, int, int], ...]] = ()

    def __init__(
        self,
        widths: Mapping[str, int] | None = None,
        num_bases: int | Mapping[str, int] = DEFAULT_NUM_BASES,
        penni: bool = True,
        num_classes: int = 10,
        biased: Collection[str] = frozenset(),
    ) -> None:
        widths = dict(widths or {})
        if not self.stages:
            raise TypeError("OptionAResNet is abstract: build ResNet20 or ResNet56")
        stem = widths.get("conv1", self.stages[0][0])
        super().__init__(self.stages, stem, widths, num_bases, penni, num_classes, projection=False, biased=biased)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, 8)  # 64×8×8 -> 64×1×1 for 32×32 inputs
        return self.linear(out.flatten(1))

    @classmethod
    def config_from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], penni: bool = True) -> dict[str, Any]:
        """Constructor arguments that fit a (possibly shrunk) checkpoint; see the module docstring."""
        widths = {"conv1": width_of(state_dict, "bn1")}
        bases = {"conv1": conv_bases(state_dict, "conv1", penni)}
        stream = widths["conv1"]
        for s, (_, blocks, first_stride) in enumerate(cls.stages, start=1):
            # The stage's residual width: the stem's for an identity first block, else block 0's bn2.
            if first_stride != 1:
                stream_out = width_of(state_dict, f"layer{s}.0.bn2")
                if stream + 2 * (stream_out // 4) != stream_out:
                    raise ModelLoadError(
                        f"state_dict entry 'layer{s}.0.bn2.weight' has shape ({stream_out},), which an option-A "
                        f"shortcut from {stream} channels cannot produce (expected "
                        f"({2 * stream},)); only block-inner widths may be shrunk in {cls.__name__}"
                    )
                stream = stream_out
            for b in range(blocks):
                path = f"layer{s}.{b}"
                _check_width(state_dict, f"{path}.bn2", stream)
                widths[f"{path}.conv1"] = width_of(state_dict, f"{path}.bn1")
                widths[f"{path}.conv2"] = stream
                for conv in ("conv1", "conv2"):
                    bases[f"{path}.{conv}"] = conv_bases(state_dict, f"{path}.{conv}", penni)
        paths = list(widths) + [p.replace(".conv2", ".shortcut.0") for p in widths if p.endswith(".conv2")]
        return {
            "widths": widths,
            "num_bases": bases,
            "num_classes": _num_classes(state_dict),
            "biased": biased_convs(state_dict, paths),
        }


class ResNet20(OptionAResNet):
    """CIFAR ResNet20: three blocks per stage (0.27M parameters dense); arguments as :class:`OptionAResNet`."""

    stages = RESNET20_STAGES


class ResNet56(OptionAResNet):
    """CIFAR ResNet56: nine blocks per stage (0.85M parameters dense); arguments as :class:`OptionAResNet`."""

    stages = RESNET56_STAGES


def _check_width(state_dict: Mapping[str, torch.Tensor], prefix: str, expected: int) -> None:
    found = entry_shape(state_dict, f"{prefix}.weight")
    if found != (expected,):
        raise ModelLoadError(
            f"state_dict entry '{prefix}.weight' has shape {found}, expected ({expected},): the residual stream "
            "width must match on both sides of each addition"
        )


def _num_classes(state_dict: Mapping[str, torch.Tensor]) -> int:
    return entry_shape(state_dict, "linear.weight")[0]
