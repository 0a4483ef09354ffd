"""The PENNI paper's CIFAR-10 input pipeline as torch ops on whole batches, and a Dataset that applies it.

Training images get a random 32x32 crop of the image zero-padded by 4 pixels and a random horizontal flip;
every image is then scaled to [0, 1] and normalized per channel with the mean and std the reference code
uses. The padding is applied to pixel values before normalization (as torchvision's ``RandomCrop`` on a
PIL image does), so padded pixels end up at ``-mean / std``, not at 0.

All randomness comes from an optional ``torch.Generator``, so a seeded generator reproduces an epoch exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from penni_deploy.data.cifar10 import CifarArrays
from penni_deploy.errors import PenniError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CROP_PADDING = 4
FLIP_PROBABILITY = 0.5


def to_float_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Turn uint8 images (N, H, W, 3) into float32 (N, 3, H, W) in [0, 1].

    Parameters
    ----------
    images : numpy.ndarray or torch.Tensor
        uint8, channels last, as :func:`~penni_deploy.data.cifar10.load_cifar10` returns them.

    Returns
    -------
    torch.Tensor
        A new float32 tensor; the input is not modified.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise PenniError(f"expected uint8 images shaped (N, H, W, 3), got shape {tuple(images.shape)}")
    # torch.tensor copies: the cached arrays are read-only and must not be aliased by a writable tensor.
    batch = images.clone() if isinstance(images, torch.Tensor) else torch.tensor(np.asarray(images))
    if batch.dtype != torch.uint8:
        raise PenniError(f"expected uint8 images, got {batch.dtype}")
    return batch.permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()


def random_crop(
    batch: torch.Tensor, padding: int = CROP_PADDING, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Crop each image of (N, C, H, W) back to H x W at a random offset after zero-padding it by ``padding``.

    Parameters
    ----------
    batch : torch.Tensor
        Images (N, C, H, W).
    padding : int
        Zeros added on every side; offsets are drawn uniformly from 0..2*padding on each axis.
    generator : torch.Generator, optional
        Source of the offsets; the global generator when None.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``batch``.
    """
    n, _, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (padding, padding, padding, padding))  # (N, C, H+2p, W+2p)
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = (left[:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
    index = torch.arange(n)[:, None, None, None]
    channel = torch.arange(batch.shape[1])[None, :, None, None]
    return padded[index, channel, rows, cols]  # (N, C, H, W)


def random_horizontal_flip(
    batch: torch.Tensor, p: float = FLIP_PROBABILITY, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror each image of (N, C, H, W) left-right with probability ``p``.

    Parameters
    ----------
    batch : torch.Tensor
        Images (N, C, H, W).
    p : float
        Probability that an image is flipped.
    generator : torch.Generator, optional
        Source of the coin flips; the global generator when None.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``batch``.
    """
    flip = torch.rand(batch.shape[0], generator=generator) < p
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch)


def normalize(
    batch: torch.Tensor, mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD
) -> torch.Tensor:
    """Return ``(batch - mean) / std`` per channel of (N, C, H, W)."""
    mean_t = torch.tensor(mean, dtype=batch.dtype)[None, :, None, None]
    std_t = torch.tensor(std, dtype=batch.dtype)[None, :, None, None]
    return (batch - mean_t) / std_t


def cifar_transform(
    images: np.ndarray | torch.Tensor, train: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply the paper's CIFAR pipeline to uint8 images (N, 32, 32, 3).

    Parameters
    ----------
    images : numpy.ndarray or torch.Tensor
        uint8, channels last.
    train : bool
        Add random crop and flip; otherwise only scale and normalize (deterministic).
    generator : torch.Generator, optional
        Source of the augmentation's randomness.

    Returns
    -------
    torch.Tensor
        float32 (N, 3, 32, 32), normalized.
    """
    batch = to_float_nchw(images)
    if train:
        batch = random_horizontal_flip(random_crop(batch, generator=generator), generator=generator)
    return normalize(batch)


class CifarDataset(Dataset):
    """CIFAR-10 arrays as a map-style Dataset of (float tensor 3x32x32, int label).

    Parameters
    ----------
    arrays : CifarArrays
        From :func:`~penni_deploy.data.cifar10.load_cifar10`.
    train : bool
        Augment (random crop + flip) or not.
    generator : torch.Generator, optional
        Source of the augmentation's randomness. DataLoader workers each receive a copy of it, so with
        ``num_workers > 0`` workers would repeat each other's draws: for reproducible multi-worker loading,
        leave it None (the workers' own seeded global generators are used) or augment whole batches with
        :func:`cifar_transform` in the main process.
    """

    def __init__(self, arrays: CifarArrays, train: bool, generator: torch.Generator | None = None) -> None:
        self.arrays = arrays
        self.train = train
        self.generator = generator

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = range(len(self))[index]  # negative indices and IndexError as for a list
        image = self.arrays.images[index : index + 1]  # keep the batch axis: (1, 32, 32, 3)
        x = cifar_transform(image, self.train, self.generator)[0]
        return x, int(self.arrays.labels[index])
