"""Load CIFAR-10 as uint8 arrays, from the original pickled batches or from JPEG tar archives.

Two on-disk forms are accepted, told apart by the files a folder holds:

- the standard ``cifar-10-batches-py`` folder (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
  ``batches.meta``). Its batches are Python pickles, so they are read through an unpickler that resolves
  only the numpy globals an array needs; any other global is refused before it is imported or called.
- a folder holding ``train.tar.gz`` / ``test.tar.gz`` with JPEG members laid out ``<split>/<class>/NNNN.jpg``
  (the shared "CIFAR-10 (JPEG q75 copy)"). Members are read straight from the archive and decoded with
  Pillow; nothing is unpacked to disk. Folder names map to the standard CIFAR-10 label order.

Decoding the train split takes seconds, so results are kept in a small in-process LRU cache keyed by the
resolved files and their modification times; the cached arrays are read-only so that no caller can alter
what the next one gets.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from penni_deploy.errors import PenniError

logger = logging.getLogger(__name__)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SPLITS = ("train", "test")
IMAGE_SIZE = 32

_PICKLE_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_META_FILE = "batches.meta"
_BATCHES_DIR = "cifar-10-batches-py"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_EXPECTED = (
    "expected either the cifar-10-batches-py folder (data_batch_1..data_batch_5, test_batch, batches.meta) "
    "or a folder holding train.tar.gz / test.tar.gz JPEG archives laid out <split>/<class>/NNNN.jpg"
)
# A full train split is 150 MB of uint8; a handful of entries bounds the memory the cache can hold.
_CACHE_SIZE = 4


@dataclasses.dataclass(frozen=True)
class CifarArrays:
    """One CIFAR-10 split in memory.

    Attributes
    ----------
    images : numpy.ndarray
        uint8, shape (N, 32, 32, 3), channels last (RGB). Read-only: it is shared with the cache.
    labels : numpy.ndarray
        int64, shape (N,), indices into ``classes``.
    classes : list of str
        Class names in label order.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def class_quotas(subset: int | None, num_classes: int) -> list[int] | None:
    """How many images to take from each class for a balanced subset of ``subset`` images.

    Parameters
    ----------
    subset : int or None
        Total number of images wanted; None means all of them.
    num_classes : int
        Number of classes.

    Returns
    -------
    list of int or None
        ``subset // num_classes`` per class, the remainder going one each to the lowest labels, so the
        total is exactly ``subset``; None when ``subset`` is None.
    """
    if subset is None:
        return None
    if isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or subset <= 0:
        raise PenniError(f"subset must be a positive number of images or None, got {subset!r}")
    base, extra = divmod(int(subset), num_classes)
    return [base + (1 if label < extra else 0) for label in range(num_classes)]


def load_cifar10(path: str | os.PathLike[str], split: str = "train", subset: int | None = None) -> CifarArrays:
    """Load one CIFAR-10 split as uint8 arrays.

    Parameters
    ----------
    path : str or path-like
        The ``cifar-10-batches-py`` folder (or its parent), or a folder holding ``train.tar.gz`` /
        ``test.tar.gz`` JPEG archives.
    split : {"train", "test"}
        Which split to load.
    subset : int, optional
        Take only this many images, balanced across classes: the first ones of each class in file order
        (see :func:`class_quotas`). Reading stops as soon as every class has its share.

    Returns
    -------
    CifarArrays
        Images (N, 32, 32, 3) uint8, labels (N,) int64 and the class names. Repeated calls with the same
        arguments return the cached arrays while the files are unchanged.

    Raises
    ------
    PenniError
        The path is missing or holds neither format, a file is corrupt or asks the unpickler for a global
        other than numpy's array rebuilders, an image is not 32x32, or the split holds too few images for
        ``subset``.
    """
    if split not in SPLITS:
        raise PenniError(f"unknown CIFAR-10 split {split!r}: use one of {', '.join(SPLITS)}")
    class_quotas(subset, len(CIFAR10_CLASSES))  # validate before touching the disk
    kind, files = _locate(Path(path).expanduser(), split)
    stamps = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    cached = _load_cached(kind, stamps, split, None if subset is None else int(subset))
    # A fresh list per call: the arrays are read-only, the class list would not be.
    return dataclasses.replace(cached, classes=list(cached.classes))


def clear_cache() -> None:
    """Drop every split decoded so far (tests and long-running processes that want the memory back)."""
    _load_cached.cache_clear()


def _locate(root: Path, split: str) -> tuple[str, list[Path]]:
    """Find the format under ``root`` and the files that ``split`` reads, checking that they exist."""
    if not root.exists():
        raise PenniError(f"CIFAR-10 path {root} does not exist: {_EXPECTED}")
    if not root.is_dir():
        raise PenniError(f"CIFAR-10 path {root} is a file, not a folder: {_EXPECTED}")
    root = root.resolve()
    if (root / _BATCHES_DIR).is_dir():
        root = root / _BATCHES_DIR
    pickle_names = (*_PICKLE_FILES["train"], *_PICKLE_FILES["test"], _META_FILE)
    if any((root / name).exists() for name in pickle_names):
        files = [root / name for name in _PICKLE_FILES[split]]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise PenniError(
                f"{root} looks like cifar-10-batches-py but lacks {', '.join(missing)} for the {split} split; "
                "re-download and unpack cifar-10-python.tar.gz"
            )
        meta = root / _META_FILE
        return "pickle", files + ([meta] if meta.is_file() else [])
    archive = root / f"{split}.tar.gz"
    if archive.is_file():
        return "jpeg", [archive]
    other = [s for s in SPLITS if s != split and (root / f"{s}.tar.gz").is_file()]
    if other:
        raise PenniError(f"{root} holds {other[0]}.tar.gz but no {split}.tar.gz for the {split} split")
    raise PenniError(f"{root} is neither CIFAR-10 format: {_EXPECTED}")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_cached(kind: str, stamps: tuple[tuple[str, int, int], ...], split: str, subset: int | None) -> CifarArrays:
    # ``stamps`` carries the mtimes only to key the cache; the paths are its first fields.
    files = [Path(stamp[0]) for stamp in stamps]
    quotas = class_quotas(subset, len(CIFAR10_CLASSES))
    if kind == "pickle":
        arrays = _read_pickled_split(files, quotas)
    else:
        arrays = _read_jpeg_split(files[0], quotas)
    if quotas is not None:
        counts = np.bincount(arrays.labels, minlength=len(quotas))
        short = [f"{arrays.classes[c]} ({counts[c]} of {q})" for c, q in enumerate(quotas) if counts[c] < q]
        if short:
            raise PenniError(f"the {split} split has too few images for subset={subset}: {', '.join(short)}")
    if len(arrays) == 0:
        raise PenniError(f"no images found for the {split} split in {files[0]}")
    arrays.images.setflags(write=False)
    arrays.labels.setflags(write=False)
    logger.info("loaded CIFAR-10 %s split: %d images from %s", split, len(arrays), files[0].parent)
    return arrays


# ----------------------------------------------------------------------------- pickled batches


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2 moved the core module; its pickles name either path
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# Everything a pickled ndarray needs; the batches' dicts, lists, ints and bytes need no globals at all.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED_GLOBALS`, so a batch file cannot name code for the unpickler to run."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise PenniError(
                f"refused global {module}.{name}: a CIFAR-10 batch holds only numpy arrays and plain "
                "containers. Do not load this file; re-download cifar-10-python.tar.gz from the official site"
            ) from None


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            # "bytes" keeps the Python-2 str keys of the official batches as bytes instead of guessing a codec.
            return _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except PenniError as exc:
        raise PenniError(f"{path}: {exc}") from None
    # Garbage bytes can fail with almost any exception type inside the unpickler.
    except Exception as exc:  # noqa: BLE001 - re-raised as PenniError naming the file
        raise PenniError(f"{path} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})") from None


def _field(batch: Any, key: str, path: Path) -> Any:
    if isinstance(batch, dict):
        for candidate in (key.encode(), key):  # official files use bytes keys; a re-pickle may use str
            if candidate in batch:
                return batch[candidate]
    raise PenniError(f"{path} is not a CIFAR-10 batch: it has no {key!r} entry")


def _read_pickled_split(files: list[Path], quotas: list[int] | None) -> CifarArrays:
    batch_files = [f for f in files if f.name != _META_FILE]
    classes = list(CIFAR10_CLASSES)
    if len(batch_files) < len(files):
        names = _field(_unpickle(files[-1]), "label_names", files[-1])
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    taken = np.zeros(len(classes), dtype=np.int64)
    images, labels = [], []
    for path in batch_files:
        data, batch_labels = _batch_arrays(_unpickle(path), path, len(classes))
        if quotas is not None:
            keep = np.concatenate(
                [np.flatnonzero(batch_labels == c)[: max(q - taken[c], 0)] for c, q in enumerate(quotas)]
            )
            keep.sort()  # file order within the subset
            data, batch_labels = data[keep], batch_labels[keep]
            taken += np.bincount(batch_labels, minlength=len(classes))
        # (N, 3072) rows are 1024 R, 1024 G, 1024 B values, each a row-major 32x32 plane: CHW -> HWC.
        images.append(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
        if quotas is not None and np.all(taken >= quotas):
            break  # later batches are not even unpickled
    return CifarArrays(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels).astype(np.int64), classes)


def _batch_arrays(batch: Any, path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, "labels", path), dtype=np.int64)
    row = 3 * IMAGE_SIZE * IMAGE_SIZE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        raise PenniError(
            f"{path}: expected 'data' as uint8 rows of {row} values (3x32x32 images), got {data.dtype} {data.shape}"
        )
    if labels.shape != (len(data),):
        raise PenniError(f"{path}: {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise PenniError(f"{path}: labels outside 0..{num_classes - 1}")
    return data, labels


# ----------------------------------------------------------------------------- JPEG archives


def _read_jpeg_split(archive: Path, quotas: list[int] | None) -> CifarArrays:
    label_of = {name: label for label, name in enumerate(CIFAR10_CLASSES)}
    taken = [0] * len(CIFAR10_CLASSES)
    images, labels = [], []
    try:
        # Stream mode: members are read in archive order without seeking back through the gzip stream.
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) < 2 or not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
                    continue
                label = label_of.get(parts[-2])
                if label is None:
                    raise PenniError(
                        f"{archive}: member {member.name} is in folder {parts[-2]!r}, which is no CIFAR-10 "
                        f"class; expected <split>/<class>/NNNN.jpg with class one of {', '.join(CIFAR10_CLASSES)}"
                    )
                if quotas is not None and taken[label] >= quotas[label]:
                    continue  # skipped members are never decoded
                images.append(_decode(tar.extractfile(member).read(), archive, member.name))
                labels.append(label)
                taken[label] += 1
                if quotas is not None and all(t >= q for t, q in zip(taken, quotas)):
                    break  # the rest of the archive is never read
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise PenniError(
            f"{archive} is not a readable .tar.gz archive ({type(exc).__name__}: {exc}); "
            "check it against SHA256SUMS or copy it again"
        ) from None
    shape = (0, IMAGE_SIZE, IMAGE_SIZE, 3)
    stacked = np.stack(images) if images else np.zeros(shape, dtype=np.uint8)
    return CifarArrays(stacked, np.asarray(labels, dtype=np.int64), list(CIFAR10_CLASSES))


def _decode(data: bytes, archive: Path, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise PenniError(
                    f"{archive}: {name} is {image.size[0]}x{image.size[1]} pixels; CIFAR-10 images are 32x32"
                )
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:  # Pillow reports bad headers as SyntaxError too
        raise PenniError(f"{archive}: {name} is not a decodable image ({exc})") from None
