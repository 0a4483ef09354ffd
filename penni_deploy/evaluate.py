"""Top-1 of compiled artifacts on a labelled CIFAR-10 folder, and calibration sets drawn from one.

``compile --eval-data`` uses ``top1`` to print a reduced-precision build's accuracy beside its
float32 build's; ``penni-deploy calibration-set`` writes the ``--calibration`` array an int8 build
needs. Images are preprocessed as the model file recorded (``preprocessing``: mean and std of [0, 1]
pixels), else with CIFAR-10's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data.cifar10 import load_cifar10
from .data.transforms import CIFAR10_MEAN, CIFAR10_STD, normalize, to_float_nchw


def preprocess(images: np.ndarray, preprocessing: dict | None = None) -> np.ndarray:
    """uint8 (N, H, W, 3) images as the float32 (N, 3, H, W) inputs the model takes."""
    mean = tuple((preprocessing or {}).get("mean") or CIFAR10_MEAN)
    std = tuple((preprocessing or {}).get("std") or CIFAR10_STD)
    return np.ascontiguousarray(normalize(to_float_nchw(images), mean, std).numpy())


def calibration_set(data: str, images: int = 256, preprocessing: dict | None = None, seed: int = 0) -> np.ndarray:
    """``images`` training images, drawn at random (seeded), preprocessed: an int8 build's calibration."""
    split = load_cifar10(data, "train")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(split), size=min(images, len(split)), replace=False))
    return preprocess(split.images[pick], preprocessing)


@dataclass(frozen=True)
class Top1:
    images: int
    top1: float
    predictions: np.ndarray


def top1(model, data: str, limit: int | None = None) -> Top1:
    """Top-1 of a loaded artifact (``penni_deploy.load``) on the test split of ``data``, at the batch
    size it was compiled for (a last partial batch is padded and its padding ignored)."""
    split = load_cifar10(data, "test")
    count = len(split) if limit is None else min(limit, len(split))
    batch = int(model.input_shape[0])
    predictions = []
    for start in range(0, count, batch):
        x = preprocess(split.images[start:min(start + batch, count)], model.manifest.preprocessing)
        real = len(x)
        if real < batch:
            x = np.concatenate([x, np.zeros((batch - real, *x.shape[1:]), np.float32)])
        predictions.append(np.asarray(model(x)).argmax(axis=1)[:real])
    predicted = np.concatenate(predictions)
    return Top1(count, float((predicted == split.labels[:count]).mean()), predicted)
