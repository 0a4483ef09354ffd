"""What a saved model records about its input: the shape, and the preprocessing it was trained with.

``penni-deploy compress`` (and ``example``) store both as TorchScript extra files, small JSON members
of the archive that ``torch.jit.load(..., _extra_files=...)`` reads back without running anything:

- ``penni_input_shape.json``: ``[N, C, H, W]``.
- ``penni_preprocessing.json``: ``{"mean": [...], "std": [...]}``, one value per input channel, for
  pixels scaled to [0, 1]: a deployer feeds ``(pixel / 255 - mean) / std``.

This module needs torch only (no TVM), so the training code can write the records on a machine
without the compiler.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: TorchScript extra file holding the input shape.
INPUT_SHAPE_EXTRA = "penni_input_shape.json"

#: TorchScript extra file holding the per-channel mean and std.
PREPROCESSING_EXTRA = "penni_preprocessing.json"


@dataclass(frozen=True)
class Preprocessing:
    """Per-channel normalization of [0, 1] pixels: ``(x - mean) / std``.

    Attributes
    ----------
    mean, std : tuple of float
        One value per input channel; every std is positive.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(f"mean and std need one value per channel each, got {len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise ValueError("mean and std must be finite and every std positive")

    @classmethod
    def from_values(cls, mean: Sequence[float], std: Sequence[float]) -> Preprocessing:
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        """Parse a record; ``ValueError`` when it is not ``{"mean": [...], "std": [...]}`` of valid numbers."""
        raw: Any = json.loads(text)
        if not isinstance(raw, Mapping) or set(raw) != {"mean", "std"}:
            raise ValueError('expected {"mean": [...], "std": [...]}')
        if not all(isinstance(raw[k], list) for k in raw) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for k in raw for v in raw[k]):
            raise ValueError("mean and std must be lists of numbers")
        return cls.from_values(raw["mean"], raw["std"])
