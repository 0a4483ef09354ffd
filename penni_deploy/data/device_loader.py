"""CIFAR-10 held on the training device as uint8 and augmented there, a whole batch at a time.

The ``DataLoader`` path (``CifarDataset``) transforms one image per Python call, which caps a GPU
at a few thousand images per second. Here the split is decoded once (``load_cifar10``), copied to
the device as one uint8 tensor (N, 3, 32, 32) — 150 MB for the train split — and every batch is
cut from it by indexing: the paper's pad-4 random crop and horizontal flip become one gather, and
normalization one multiply-add, so no worker process or host copy sits in the training loop.

Randomness is drawn on the CPU, once per epoch, from a generator seeded by (seed, epoch): the
permutation, then every position's crop offsets and flip. The draws are therefore the same on
every device and after a resume, and the augmented pixels are identical on CPU and CUDA (the crop
and flip are exact integer indexing). Padding is applied to pixel values before normalization, as
in ``transforms.py``, so padded pixels become ``-mean / std``.

Data-parallel runs split each epoch as ``DistributedSampler`` does (process r of N reads positions
r, r+N, ... of one shared permutation, padded by repeating its start to a multiple of N), with the
augmentation drawn per position of that permutation, so the N shares of a batch are the single-process
batch, augmentation included.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from penni_deploy.data.cifar10 import CifarArrays
from penni_deploy.data.transforms import CIFAR10_MEAN, CIFAR10_STD, CROP_PADDING, FLIP_PROBABILITY
from penni_deploy.errors import PenniError

# Epoch seeds: seed * _EPOCH_STRIDE + epoch keeps (seed, epoch) pairs apart for any realistic epoch count.
_EPOCH_STRIDE = 1_000_003


def crop_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
              padding: int = CROP_PADDING) -> torch.Tensor:
    """Crop each image of (N, C, H, W) at its offset in the zero-padded image, then mirror it if ``flip``.

    Parameters
    ----------
    images : torch.Tensor
        (N, C, H, W), any dtype (uint8 here).
    top, left : torch.Tensor
        (N,) integer offsets in 0..2*padding into the image padded by ``padding`` on every side.
    flip : torch.Tensor
        (N,) bool: mirror the crop left-right.
    padding : int
        Zeros added on every side before cropping.

    Returns
    -------
    torch.Tensor
        (N, C, H, W), same dtype and device as ``images``.
    """
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))  # (N, C, H+2p, W+2p)
    rows = top[:, None] + torch.arange(h, device=device)  # (N, H)
    cols = left[:, None] + torch.arange(w, device=device)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a mirrored crop reads its columns backwards
    image = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    return padded[image, channel, rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, H, W)


class DeviceCifarBatches:
    """Batches of (normalized float images, int64 labels) cut from a uint8 copy of the split on ``device``.

    Parameters
    ----------
    arrays : CifarArrays
        The split, from :func:`~penni_deploy.data.cifar10.load_cifar10`.
    batch_size : int
        Images per batch (per process, in a data-parallel run); the last batch may be smaller.
    device : str or torch.device
        Where the images are held and augmented.
    train : bool
        Shuffle every epoch and augment (when ``augment``); otherwise file order, unaugmented.
    augment : bool
        The paper's pad-4 random crop and horizontal flip (training only).
    seed : int
        Seeds the per-epoch draws (see the module docstring).
    dtype : torch.dtype
        Dtype of the images handed out (float32; float64 for exact comparisons).
    channels_last : bool
        Hand out images in channels-last memory format.
    rank, world_size : int
        This process's share of every epoch in a data-parallel run.
    mean, std : tuple of float
        Per-channel normalization of [0, 1] pixels.
    """

    def __init__(self, arrays: CifarArrays, batch_size: int, device: str | torch.device = "cpu", *, train: bool,
                 augment: bool = True, seed: int = 0, dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1, mean: tuple[float, ...] = CIFAR10_MEAN,
                 std: tuple[float, ...] = CIFAR10_STD) -> None:
        if batch_size < 1:
            raise PenniError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise PenniError(f"rank {rank} is outside 0..{world_size - 1}")
        self.device = torch.device(device)
        # torch.tensor copies: the cached arrays are read-only. HWC -> CHW once, here, not per batch.
        self.images = torch.tensor(np.asarray(arrays.images)).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.labels = torch.tensor(np.asarray(arrays.labels), dtype=torch.int64).to(self.device)
        self.classes = list(arrays.classes)
        self.batch_size = int(batch_size)
        self.train, self.augment, self.seed = train, augment, int(seed)
        self.dtype, self.channels_last = dtype, channels_last
        self.rank, self.world_size = rank, world_size
        # (x / 255 - mean) / std as one multiply-add: x * scale + shift, shaped (1, C, 1, 1).
        std_t = torch.tensor(std, dtype=torch.float64)
        self.scale = (1.0 / (255.0 * std_t)).to(self.device, dtype)[None, :, None, None]
        self.shift = (-torch.tensor(mean, dtype=torch.float64) / std_t).to(self.device, dtype)[None, :, None, None]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch for this process."""
        return -(-self.positions() // self.batch_size)

    def positions(self) -> int:
        """Images per epoch for this process."""
        return -(-len(self.labels) // self.world_size)

    def epoch_draws(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This process's (order, top, left, flip) for the current epoch, on the CPU.

        ``order`` indexes the images in the order they are handed out; ``top``/``left``/``flip`` are the
        crop offsets and flips of those positions (zeros and False when not augmenting).
        """
        n = len(self.labels)
        if self.train:
            gen = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + self.epoch)
            order = torch.randperm(n, generator=gen)
            top = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=gen)
            left = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=gen)
            flip = torch.rand(n, generator=gen) < FLIP_PROBABILITY
        else:
            order = torch.arange(n)
        if not (self.train and self.augment):  # the centred, unflipped crop is the image itself
            top = left = torch.full((n,), CROP_PADDING, dtype=torch.int64)
            flip = torch.zeros(n, dtype=torch.bool)
        # Drawn for n positions whatever the world size, then padded as DistributedSampler pads, so that
        # the shares of N processes hold exactly the single-process draws.
        extra = self.positions() * self.world_size - n
        share = slice(self.rank, None, self.world_size)
        return tuple(torch.cat([t, t[:extra]])[share] for t in (order, top, left, flip))

    def __iter__(self):
        order, top, left, flip = (t.to(self.device) for t in self.epoch_draws())
        augmented = self.train and self.augment
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            pixels = self.images[index]  # (B, 3, 32, 32) uint8
            if augmented:
                cut = slice(start, start + self.batch_size)
                pixels = crop_flip(pixels, top[cut], left[cut], flip[cut])
            images = pixels.to(self.dtype) * self.scale + self.shift
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, self.labels[index]
