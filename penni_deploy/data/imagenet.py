"""An ImageFolder-style ImageNet reader that needs only Pillow and torch (torchvision is not installable here).

``root/<class>/*.{jpg,jpeg,png}``: classes are the sorted sub-folder names, labels their indices. Training
samples get torchvision's ``RandomResizedCrop(224)`` (scale 0.08-1, aspect ratio 3/4-4/3, bilinear) and a
random horizontal flip; evaluation samples ``Resize(256)`` on the shorter side and ``CenterCrop(224)``.
Both end with scaling to [0, 1] and the usual ImageNet normalization.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from penni_deploy.data.cifar10 import class_quotas
from penni_deploy.data.transforms import normalize
from penni_deploy.errors import PenniError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CROP_SIZE = 224
RESIZE_SIZE = 256
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# torchvision tries this many random boxes before falling back to a centre crop.
_CROP_ATTEMPTS = 10


class ImageFolderDataset(Dataset):
    """Images under ``root/<class>/`` as a map-style Dataset of (float tensor 3x224x224, int label).

    Parameters
    ----------
    root : str or path-like
        Folder with one sub-folder per class.
    train : bool
        Random-resized crop + flip, or resize + centre crop.
    subset : int, optional
        Keep only this many images, balanced across classes: the first of each class in sorted file-name
        order (see :func:`~penni_deploy.data.cifar10.class_quotas`).
    generator : torch.Generator, optional
        Source of the training augmentation's randomness; the global generator when None.

    Attributes
    ----------
    classes : list of str
        Sorted class folder names; a label is an index into it.
    samples : list of (pathlib.Path, int)
        Image files and their labels.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool,
        subset: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.train = train
        self.generator = generator
        self.classes, self.samples = _scan(self.root, subset)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = _open_rgb(path)
        if self.train:
            image = _random_resized_crop(image, self.generator)
            if torch.rand(1, generator=self.generator).item() < 0.5:
                image = image.transpose(_pil().Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            image = _center_crop(_resize_shorter(image, RESIZE_SIZE), CROP_SIZE)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (224, 224, 3), a fresh writable copy
        x = pixels.permute(2, 0, 1).to(torch.float32).div_(255.0)[None]  # (1, 3, 224, 224)
        return normalize(x, IMAGENET_MEAN, IMAGENET_STD)[0], label


def _scan(root: Path, subset: int | None) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise PenniError(f"image folder {root} does not exist or is not a folder: expected root/<class>/*.jpg")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise PenniError(f"{root} has no class sub-folders: expected root/<class>/*.jpg (or .jpeg, .png)")
    quotas = class_quotas(subset, len(classes))
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if quotas is not None:
            if len(files) < quotas[label]:
                raise PenniError(
                    f"class {name!r} in {root} has {len(files)} images, fewer than the {quotas[label]} "
                    f"that subset={subset} takes from it; ask for a smaller subset"
                )
            files = files[: quotas[label]]
        samples.extend((f, label) for f in files)
    if not samples:
        raise PenniError(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {root}/<class>/")
    return classes, samples


def _pil():
    import PIL.Image  # imported on use: reading the package must not need Pillow

    return PIL


def _open_rgb(path: Path):
    PIL = _pil()
    try:
        with PIL.Image.open(path) as image:
            return image.convert("RGB")
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise PenniError(f"{path} is not a decodable image ({exc})") from None


def _random_resized_crop(image, generator: torch.Generator | None):
    """torchvision's RandomResizedCrop box choice, then a bilinear resize of the box to CROP_SIZE."""
    width, height = image.size
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(_CROP_ATTEMPTS):
        target_area = area * torch.empty(1).uniform_(*CROP_SCALE, generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            break
    else:  # no box fitted: the whole image, trimmed to the nearest allowed aspect ratio, centred
        ratio = width / height
        if ratio < CROP_RATIO[0]:
            w, h = width, round(width / CROP_RATIO[0])
        elif ratio > CROP_RATIO[1]:
            w, h = round(height * CROP_RATIO[1]), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    box = (left, top, left + w, top + h)
    return image.resize((CROP_SIZE, CROP_SIZE), _pil().Image.Resampling.BILINEAR, box=box)


def _resize_shorter(image, size: int):
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    return image.resize(new, _pil().Image.Resampling.BILINEAR)


def _center_crop(image, size: int):
    width, height = image.size
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return image.crop((left, top, left + size, top + size))
