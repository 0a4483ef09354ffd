"""Training and evaluation data: CIFAR-10 (pickled batches or JPEG archives) and ImageNet-style folders."""

from .cifar10 import (
    CIFAR10_CLASSES,
    CifarArrays,
    class_quotas,
    clear_cache,
    load_cifar10,
)
from .imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CifarDataset,
    cifar_transform,
    normalize,
    random_crop,
    random_horizontal_flip,
    to_float_nchw,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CifarArrays",
    "CifarDataset",
    "ImageFolderDataset",
    "cifar_transform",
    "class_quotas",
    "clear_cache",
    "load_cifar10",
    "normalize",
    "random_crop",
    "random_horizontal_flip",
    "to_float_nchw",
]
