"""The device-resident CIFAR batches: crops and flips equal a per-image reference, every image comes once
per epoch with its own label, the draws follow the seed, and data-parallel shares make up the batches."""

import numpy as np
import pytest
import torch

from penni_deploy.data.cifar10 import CifarArrays
from penni_deploy.data.device_loader import DeviceCifarBatches, crop_flip
from penni_deploy.data.transforms import cifar_transform
from penni_deploy.errors import PenniError


def make_arrays(n=23, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, size=(n, 32, 32, 3), dtype=np.uint8)  # >= 1: padding zeros stand out
    images.setflags(write=False)  # as load_cifar10 returns them
    return CifarArrays(images, np.arange(n, dtype=np.int64) % 10, [f"c{i}" for i in range(10)])


def reference_crop_flip(image_hwc: np.ndarray, top: int, left: int, flip: bool) -> np.ndarray:
    """One image, the obvious way: zero-pad by 4, take the 32x32 window, mirror it."""
    window = np.pad(image_hwc, ((4, 4), (4, 4), (0, 0)))[top:top + 32, left:left + 32]
    return (window[:, ::-1] if flip else window).transpose(2, 0, 1)  # HWC -> CHW


def normalized(pixels_chw_uint8: np.ndarray) -> torch.Tensor:
    """What the batches should hand out for these pixels: transforms.py's normalization."""
    return cifar_transform(np.ascontiguousarray(pixels_chw_uint8.transpose(0, 2, 3, 1)), train=False)


def test_crop_flip_equals_the_per_image_reference():
    arrays = make_arrays(6)
    top = torch.tensor([0, 8, 4, 1, 7, 3])
    left = torch.tensor([8, 0, 4, 6, 2, 5])
    flip = torch.tensor([False, True, False, True, True, False])
    chw = torch.tensor(arrays.images).permute(0, 3, 1, 2)
    got = crop_flip(chw, top, left, flip).numpy()
    for i in range(6):
        np.testing.assert_array_equal(got[i], reference_crop_flip(arrays.images[i], int(top[i]), int(left[i]),
                                                                   bool(flip[i])), err_msg=f"image {i}")


def test_an_epoch_hands_out_each_image_once_with_its_label_in_the_permuted_order():
    arrays = make_arrays()
    batches = DeviceCifarBatches(arrays, 5, train=True, seed=3)
    batches.set_epoch(2)
    order, top, left, flip = batches.epoch_draws()
    assert sorted(order.tolist()) == list(range(23)) and order.tolist() != list(range(23))
    got = list(batches)
    assert [len(y) for _, y in got] == [5, 5, 5, 5, 3] and len(batches) == 5
    images = torch.cat([x for x, _ in got])
    labels = torch.cat([y for _, y in got])
    np.testing.assert_array_equal(labels.numpy(), arrays.labels[order.numpy()])
    expected = np.stack([reference_crop_flip(arrays.images[int(k)], int(t), int(l), bool(f))
                         for k, t, l, f in zip(order, top, left, flip)])
    torch.testing.assert_close(images, normalized(expected), rtol=0, atol=1e-6)


def test_each_augmented_image_is_one_of_its_source_images_crops_or_mirrored_crops():
    # Independent of epoch_draws: search all 9 x 9 x 2 candidates of the image the label points to.
    arrays = make_arrays(8)
    got = list(DeviceCifarBatches(arrays, 8, train=True, seed=0))
    (images, labels), = got
    for image, label in zip(images, labels):
        source = arrays.images[int(label)]  # labels are the indices here (8 images, 10 classes)
        candidates = [normalized(reference_crop_flip(source, t, l, f)[None])[0]
                      for t in range(9) for l in range(9) for f in (False, True)]
        assert any(torch.allclose(image, c, atol=1e-6) for c in candidates)


def test_draws_cover_every_offset_and_flip_about_half():
    batches = DeviceCifarBatches(make_arrays(400), 400, train=True, seed=0)
    _, top, left, flip = batches.epoch_draws()
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))
    assert 0.4 < flip.float().mean() < 0.6


def test_the_seed_and_epoch_decide_everything():
    arrays = make_arrays()

    def epoch(seed, number):
        batches = DeviceCifarBatches(arrays, 7, train=True, seed=seed)
        batches.set_epoch(number)
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    first = epoch(0, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(0, 0)))  # a resumed run sees the same epoch
    assert not torch.equal(first[1], epoch(0, 1)[1])  # a new permutation every epoch
    assert not torch.equal(first[1], epoch(1, 0)[1])  # and per seed


def test_evaluation_batches_are_the_split_in_order_unaugmented():
    arrays = make_arrays()
    batches = DeviceCifarBatches(arrays, 10, train=False)
    images = torch.cat([x for x, _ in batches])
    torch.testing.assert_close(images, cifar_transform(arrays.images, train=False), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(torch.cat([y for _, y in batches]).numpy(), arrays.labels)


def test_no_augment_keeps_the_shuffle_but_not_the_crops():
    arrays = make_arrays()
    batches = DeviceCifarBatches(arrays, 23, train=True, augment=False, seed=0)
    (images, labels), = list(batches)
    order = batches.epoch_draws()[0].numpy()
    np.testing.assert_array_equal(labels.numpy(), arrays.labels[order])
    torch.testing.assert_close(images, cifar_transform(arrays.images[order], train=False), rtol=0, atol=1e-6)


def test_data_parallel_shares_interleave_into_the_single_process_batches():
    arrays = make_arrays(23)  # odd: the epoch is padded by repeating its start, as DistributedSampler does
    single = DeviceCifarBatches(arrays, 6, train=True, seed=5)
    shares = [DeviceCifarBatches(arrays, 3, train=True, seed=5, rank=r, world_size=2) for r in (0, 1)]
    whole = torch.cat([x for x, _ in single])
    parts = [torch.cat([x for x, _ in share]) for share in shares]
    assert len(parts[0]) == len(parts[1]) == 12
    interleaved = torch.stack(parts, dim=1).reshape(24, 3, 32, 32)
    torch.testing.assert_close(interleaved[:23], whole, rtol=0, atol=0)
    torch.testing.assert_close(interleaved[23], whole[0], rtol=0, atol=0)


def test_dtype_and_channels_last():
    batches = DeviceCifarBatches(make_arrays(4), 4, train=True, dtype=torch.float64, channels_last=True)
    (images, labels), = list(batches)
    assert images.dtype == torch.float64 and labels.dtype == torch.int64
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()


@pytest.mark.parametrize("kwargs", [dict(batch_size=0), dict(batch_size=4, rank=2, world_size=2)],
                         ids=["empty-batch", "rank-outside-world"])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(PenniError):
        DeviceCifarBatches(make_arrays(4), train=True, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches():
    arrays = make_arrays()
    cpu = torch.cat([x for x, _ in DeviceCifarBatches(arrays, 8, "cpu", train=True, seed=1)])
    gpu = torch.cat([x for x, _ in DeviceCifarBatches(arrays, 8, "cuda", train=True, seed=1)])
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-6)
