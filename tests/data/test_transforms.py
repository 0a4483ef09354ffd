"""The CIFAR augmentation: crops are windows of the zero-padded image, flips mirror, normalization is exact."""

import warnings

import numpy as np
import pytest
import torch

from penni_deploy.data.cifar10 import CifarArrays
from penni_deploy.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CifarDataset,
    cifar_transform,
    normalize,
    random_crop,
    random_horizontal_flip,
    to_float_nchw,
)
from penni_deploy.errors import PenniError


def make_images(n=16, seed=0):
    images = np.random.default_rng(seed).integers(1, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    images.setflags(write=False)  # as load_cifar10 returns them
    return images


def test_crop_is_a_window_of_the_zero_padded_image():
    batch = to_float_nchw(make_images())  # pixels >= 1/255, so padding zeros are recognisable
    cropped = random_crop(batch, padding=4, generator=torch.Generator().manual_seed(0))
    assert cropped.shape == (16, 3, 32, 32)
    padded = torch.nn.functional.pad(batch, (4, 4, 4, 4))
    offsets = []
    for i in range(len(batch)):
        matches = [
            (top, left)
            for top in range(9)
            for left in range(9)
            if torch.equal(cropped[i], padded[i, :, top : top + 32, left : left + 32])
        ]
        assert len(matches) == 1
        offsets.append(matches[0])
    assert len(set(offsets)) > 1  # offsets vary across the batch


def test_flip_mirrors_or_keeps_each_image():
    batch = to_float_nchw(make_images(64))
    assert torch.equal(random_horizontal_flip(batch, p=1.0), batch.flip(-1))
    assert torch.equal(random_horizontal_flip(batch, p=0.0), batch)
    out = random_horizontal_flip(batch, generator=torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, b.flip(-1)) for o, b in zip(out, batch)]
    kept = [torch.equal(o, b) for o, b in zip(out, batch)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 64


def test_eval_transform_is_the_normalization_formula():
    images = make_images()
    out = cifar_transform(images, train=False)
    expected = (images.astype(np.float64) / 255.0 - CIFAR10_MEAN) / CIFAR10_STD  # (N, 32, 32, 3)
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(normalize(x)[:, 1], (x[:, 1] - 0.4822) / 0.1994)


def test_eval_is_deterministic_and_ignores_the_generator():
    images = make_images()
    first = cifar_transform(images, train=False, generator=torch.Generator().manual_seed(1))
    second = cifar_transform(images, train=False, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, second)


def test_train_is_reproducible_from_the_generator():
    images = make_images()
    a = cifar_transform(images, train=True, generator=torch.Generator().manual_seed(3))
    b = cifar_transform(images, train=True, generator=torch.Generator().manual_seed(3))
    c = cifar_transform(images, train=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (16, 3, 32, 32)


def test_padding_becomes_minus_mean_over_std():
    black = np.zeros((64, 32, 32, 3), dtype=np.uint8)
    out = cifar_transform(black, train=True, generator=torch.Generator().manual_seed(0))
    floor = torch.tensor([-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD)])
    torch.testing.assert_close(out, floor[None, :, None, None].expand_as(out))


def test_dataset_items_and_loader():
    images = make_images(10)
    arrays = CifarArrays(images, np.arange(10, dtype=np.int64), ["c"] * 10)
    dataset = CifarDataset(arrays, train=True, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning from the read-only cache
        x, label = dataset[-1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and label == 9
    eval_set = CifarDataset(arrays, train=False)
    torch.testing.assert_close(eval_set[3][0], cifar_transform(images[3:4], train=False)[0])
    xs, ys = next(iter(torch.utils.data.DataLoader(eval_set, batch_size=4)))
    assert xs.shape == (4, 3, 32, 32) and ys.tolist() == [0, 1, 2, 3]
    with pytest.raises(IndexError):
        dataset[10]


def test_wrong_layout_is_refused():
    with pytest.raises(PenniError, match=r"\(N, H, W, 3\)"):
        to_float_nchw(np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(PenniError, match="expected uint8"):
        to_float_nchw(np.zeros((2, 32, 32, 3), np.float32))
