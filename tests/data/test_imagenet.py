"""The ImageFolder reader on a tiny synthetic tree of 40x30 PNGs."""

import numpy as np
import pytest
import torch
from PIL import Image

from penni_deploy.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataset,
    _center_crop,
    _resize_shorter,
)
from penni_deploy.errors import PenniError

# Written in an unsorted order on purpose; labels follow the sorted names.
CLASSES = {"cat": (250, 10, 10), "ant": (10, 250, 10), "bee": (10, 10, 250)}


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    for name, color in CLASSES.items():
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), color).save(root / name / f"{i:02d}.png")
        (root / name / "notes.txt").write_text("not an image")
    Image.new("RGB", (40, 30), CLASSES["bee"]).save(root / "bee" / "03.JPG", format="JPEG", quality=95)
    return root


def expected_plane(color):
    """A uniform image of ``color`` after scaling and ImageNet normalization, as (3,)."""
    return torch.tensor([(c / 255 - m) / s for c, m, s in zip(color, IMAGENET_MEAN, IMAGENET_STD)])


def test_scan_sorts_classes_and_filters_extensions(folder):
    dataset = ImageFolderDataset(folder, train=False)
    assert dataset.classes == ["ant", "bee", "cat"]
    assert len(dataset) == 10
    assert [label for _, label in dataset.samples] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert dataset.samples[6][0].name == "03.JPG"


def test_eval_resizes_crops_and_normalizes(folder):
    dataset = ImageFolderDataset(folder, train=False)
    x, label = dataset[8]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and label == 2
    torch.testing.assert_close(x, expected_plane(CLASSES["cat"])[:, None, None].expand(3, 224, 224))
    assert torch.equal(dataset[8][0], x)


def test_eval_geometry_matches_torchvision_conventions():
    resized = _resize_shorter(Image.new("RGB", (40, 30)), 256)
    assert resized.size == (341, 256)  # shorter side to 256, longer scaled and truncated
    assert _center_crop(resized, 224).size == (224, 224)
    # Centre crop keeps the middle: a marker column at the centre stays at the centre.
    image = Image.new("L", (341, 256), 0)
    image.putpixel((170, 128), 255)
    cropped = np.asarray(_center_crop(image, 224))
    assert np.argwhere(cropped == 255).tolist() == [[128 - 16, 170 - 58]]


def test_train_crop_is_seeded_and_random(folder):
    gradient = np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (30, 1, 3))
    Image.fromarray(gradient).save(folder / "ant" / "00.png")

    def draw(seed):
        dataset = ImageFolderDataset(folder, train=True, generator=torch.Generator().manual_seed(seed))
        return torch.stack([dataset[0][0] for _ in range(4)])

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (4, 3, 224, 224)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # successive draws differ
    x, _ = ImageFolderDataset(folder, train=True)[5]  # a uniform image stays uniform whatever the crop
    torch.testing.assert_close(x, expected_plane(CLASSES["bee"])[:, None, None].expand(3, 224, 224))


def test_subset_is_balanced(folder):
    dataset = ImageFolderDataset(folder, train=False, subset=4)
    assert [(path.name, label) for path, label in dataset.samples] == [
        ("00.png", 0),
        ("01.png", 0),
        ("00.png", 1),
        ("00.png", 2),
    ]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist or is not a folder"),
        ("no_classes", "has no class sub-folders"),
        ("no_images", "no .jpg/.jpeg/.png images"),
        ("subset_too_big", "has 3 images, fewer than the 4"),
    ],
)
def test_bad_folders_raise_clear_errors(tmp_path, folder, case, message):
    root, subset = folder, None
    if case == "missing":
        root = tmp_path / "nowhere"
    elif case == "no_classes":
        root = tmp_path / "flat"
        root.mkdir()
    elif case == "no_images":
        root = tmp_path / "empty"
        (root / "cls").mkdir(parents=True)
    elif case == "subset_too_big":
        subset = 12
    with pytest.raises(PenniError, match=message):
        ImageFolderDataset(root, train=False, subset=subset)


def test_corrupt_image_names_the_file(folder):
    (folder / "ant" / "00.png").write_bytes(b"not a png")
    dataset = ImageFolderDataset(folder, train=False)
    with pytest.raises(PenniError, match=r"00.png is not a decodable image"):
        dataset[0]
