"""CIFAR-10 loading: the shared JPEG copy, synthetic pickled batches, the unpickler's refusals, and bad inputs."""

import io
import os
import pickle
import struct
import tarfile
import time
from typing import ClassVar

import numpy as np
import pytest

from penni_deploy.data.cifar10 import (
    CIFAR10_CLASSES,
    class_quotas,
    clear_cache,
    load_cifar10,
)
from penni_deploy.errors import PenniError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JPEG_DIR = os.path.join(REPO_ROOT, "..", "shared", "data", "cifar10-jpeg")
# Per-channel means of the full test split, from the copy's README.
TEST_MEANS = (125.99, 123.69, 114.85)

needs_jpeg = pytest.mark.skipif(
    not os.path.isfile(os.path.join(JPEG_DIR, "test.tar.gz")), reason="shared CIFAR-10 JPEG copy not present"
)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


# ----------------------------------------------------------------------------- synthetic sources


class Py2Pickler(pickle._Pickler):
    """Writes every str and bytes as a Python-2 ``str`` (BINSTRING), as the official batches were pickled.

    A Python-3 protocol-2 pickle would instead rebuild bytes through ``_codecs.encode``, a global that
    the loader rightly refuses; and numpy 1.x named its array rebuilder ``numpy.core.multiarray``.
    """

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def dump_py2(obj, path):
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


def write_batch(path, images_chw, labels):
    """A batch dict as the official files hold it: bytes keys, (N, 3072) uint8 rows, a list of labels."""
    rows = np.ascontiguousarray(images_chw.reshape(len(images_chw), -1))
    dump_py2({b"batch_label": b"synthetic", b"data": rows, b"labels": list(labels)}, path)


def make_batches_folder(tmp_path, per_batch=20, seed=0):
    """A cifar-10-batches-py folder of small batches; returns (folder, {file name: (images CHW, labels)})."""
    rng = np.random.default_rng(seed)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        write_batch(folder / name, images, labels)
        written[name] = (images, labels)
    dump_py2({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}, folder / "batches.meta")
    return folder, written


def jpeg_bytes(size=(32, 32), color=(200, 30, 60)):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_tar(path, members):
    """A .tar.gz holding ``members`` ({name: bytes}) in the given order."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# ----------------------------------------------------------------------------- the shared JPEG copy


@needs_jpeg
@pytest.mark.parametrize(("split", "subset"), [("train", 200), ("test", 100)], ids=["train200", "test100"])
def test_jpeg_subset_is_balanced(split, subset):
    arrays = load_cifar10(JPEG_DIR, split, subset=subset)
    assert arrays.images.shape == (subset, 32, 32, 3)
    assert arrays.images.dtype == np.uint8
    assert arrays.labels.dtype == np.int64
    assert np.bincount(arrays.labels, minlength=10).tolist() == [subset // 10] * 10
    assert arrays.classes == list(CIFAR10_CLASSES)
    assert not arrays.images.flags.writeable


@needs_jpeg
def test_jpeg_test_split_means():
    subset = load_cifar10(JPEG_DIR, "test", subset=100)
    assert np.all(np.abs(subset.images.reshape(-1, 3).mean(0) - TEST_MEANS) < 20)
    full = load_cifar10(JPEG_DIR, "test")
    assert full.images.shape == (10000, 32, 32, 3)
    assert np.bincount(full.labels).tolist() == [1000] * 10
    np.testing.assert_allclose(full.images.reshape(-1, 3).mean(0), TEST_MEANS, atol=0.01)
    # The subset is the first images of each class.
    first_airplanes = full.images[full.labels == 0][:10]
    np.testing.assert_array_equal(subset.images[subset.labels == 0], first_airplanes)


@needs_jpeg
def test_jpeg_second_call_hits_cache():
    first = load_cifar10(JPEG_DIR, "test", subset=100)
    start = time.perf_counter()
    second = load_cifar10(JPEG_DIR, "test", subset=100)
    assert time.perf_counter() - start < 0.05
    assert second.images is first.images
    second.classes.append("not shared")  # the class list is a per-call copy
    assert load_cifar10(JPEG_DIR, "test", subset=100).classes == list(CIFAR10_CLASSES)


# ----------------------------------------------------------------------------- synthetic pickled batches


@pytest.mark.parametrize("given", ["folder", "parent"])
def test_pickled_batches_load_as_hwc(tmp_path, given):
    folder, written = make_batches_folder(tmp_path)
    arrays = load_cifar10(folder if given == "folder" else tmp_path, "train")
    expected_chw = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    expected_labels = [label for i in range(1, 6) for label in written[f"data_batch_{i}"][1]]
    assert arrays.images.shape == (100, 32, 32, 3) and arrays.images.dtype == np.uint8
    np.testing.assert_array_equal(arrays.images, expected_chw.transpose(0, 2, 3, 1))
    # Row layout of the official files: 1024 red, 1024 green, 1024 blue, each row-major.
    row = expected_chw.reshape(100, -1)
    assert arrays.images[7, 5, 9, 2] == row[7, 2 * 1024 + 5 * 32 + 9]
    assert arrays.labels.tolist() == expected_labels and arrays.labels.dtype == np.int64
    assert arrays.classes == list(CIFAR10_CLASSES)


def test_pickled_test_split_and_custom_label_names(tmp_path):
    folder, written = make_batches_folder(tmp_path)
    names = [f"class{i}" for i in range(10)]
    dump_py2({b"label_names": [n.encode() for n in names]}, folder / "batches.meta")
    arrays = load_cifar10(folder, "test")
    np.testing.assert_array_equal(arrays.images, written["test_batch"][0].transpose(0, 2, 3, 1))
    assert arrays.classes == names


def test_python3_pickles_with_numpy2_names_load(tmp_path):
    # A batch re-pickled by Python 3 and numpy 2 (protocol 4: bytes need no _codecs global).
    folder, written = make_batches_folder(tmp_path)
    images, labels = written["test_batch"]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": images.reshape(len(images), -1), b"labels": labels}, f, protocol=4)
    assert b"numpy._core.multiarray" in (folder / "test_batch").read_bytes()
    arrays = load_cifar10(folder, "test")
    np.testing.assert_array_equal(arrays.images, images.transpose(0, 2, 3, 1))


def test_pickled_subset_stops_reading_early(tmp_path):
    folder, _ = make_batches_folder(tmp_path, per_batch=200)
    (folder / "data_batch_5").write_bytes(b"not a pickle")  # read only by a full load
    arrays = load_cifar10(folder, "train", subset=50)
    assert np.bincount(arrays.labels, minlength=10).tolist() == [5] * 10
    with pytest.raises(PenniError, match="data_batch_5 is not a readable CIFAR-10 batch"):
        load_cifar10(folder, "train")


def test_cache_follows_file_changes(tmp_path):
    folder, written = make_batches_folder(tmp_path)
    first = load_cifar10(folder, "test")
    assert load_cifar10(folder, "test").images is first.images
    images, labels = written["test_batch"]
    write_batch(folder / "test_batch", 255 - images, labels)
    stat = os.stat(folder / "test_batch")
    os.utime(folder / "test_batch", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    np.testing.assert_array_equal(load_cifar10(folder, "test").images, 255 - first.images)


class _Exploit:
    """Pickles as a call to os.system, as a hostile batch file would."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused(tmp_path):
    folder, _ = make_batches_folder(tmp_path)
    marker = tmp_path / "marker_a"
    dump_py2({b"data": _Exploit(f"touch {marker}"), b"labels": [0]}, folder / "data_batch_1")
    # Control: the same bytes through the stock unpickler do run the command.
    control = tmp_path / "marker_b"  # same length: BINSTRING carries it
    pickle.loads((folder / "data_batch_1").read_bytes().replace(str(marker).encode(), str(control).encode()))
    assert control.exists()
    with pytest.raises(PenniError, match=r"data_batch_1: refused global (posix|os|nt)\.system"):
        load_cifar10(folder, "train")
    assert not marker.exists()


# ----------------------------------------------------------------------------- synthetic JPEG archives


def test_jpeg_subset_never_decodes_unneeded_members(tmp_path):
    members = {}
    for name in CIFAR10_CLASSES:
        members[f"train/{name}/0000.jpg"] = jpeg_bytes()
        members[f"train/{name}/0001.jpg"] = b"corrupt jpeg"
    write_tar(tmp_path / "train.tar.gz", members)
    arrays = load_cifar10(tmp_path, "train", subset=10)
    assert arrays.labels.tolist() == list(range(10))
    assert np.all(np.abs(arrays.images.astype(int) - (200, 30, 60)) < 8)
    with pytest.raises(PenniError, match="0001.jpg is not a decodable image"):
        load_cifar10(tmp_path, "train")


def test_subset_not_divisible_by_ten_is_exact():
    assert class_quotas(23, 10) == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert class_quotas(None, 10) is None


@pytest.mark.parametrize(
    ("setup", "split", "subset", "message"),
    [
        ("missing", "train", None, "does not exist"),
        ("empty", "train", None, "neither CIFAR-10 format: expected either the cifar-10-batches-py"),
        ("file", "train", None, "is a file, not a folder"),
        ("other_split_only", "test", None, "no test.tar.gz"),
        ("corrupt_archive", "test", None, "not a readable .tar.gz archive"),
        ("wrong_size", "test", None, r"0000.jpg is 16x16 pixels; CIFAR-10 images are 32x32"),
        ("unknown_class", "test", None, "'unicorn', which is no CIFAR-10 class"),
        ("too_few", "test", 30, r"too few images for subset=30: airplane \(1 of 3\)"),
        ("missing_batch", "train", None, "lacks data_batch_3"),
        ("wrong_row", "test", None, "rows of 3072 values"),
        ("empty", "valid", None, "unknown CIFAR-10 split 'valid'"),
        ("empty", "train", 0, "subset must be a positive number"),
    ],
)
def test_bad_sources_raise_clear_errors(tmp_path, setup, split, subset, message):
    path = tmp_path / "data"
    if setup != "missing":
        path.mkdir()
    if setup == "file":
        path = path / "x.bin"
        path.write_bytes(b"")
    elif setup == "other_split_only":
        write_tar(path / "train.tar.gz", {"train/cat/0000.jpg": jpeg_bytes()})
    elif setup == "corrupt_archive":
        (path / "test.tar.gz").write_bytes(b"\x1f\x8b" + os.urandom(200))
    elif setup == "wrong_size":
        write_tar(path / "test.tar.gz", {"test/cat/0000.jpg": jpeg_bytes(size=(16, 16))})
    elif setup == "unknown_class":
        write_tar(path / "test.tar.gz", {"test/unicorn/0000.jpg": jpeg_bytes()})
    elif setup == "too_few":
        write_tar(path / "test.tar.gz", {f"test/{c}/0000.jpg": jpeg_bytes() for c in CIFAR10_CLASSES})
    elif setup == "missing_batch":
        folder, _ = make_batches_folder(path)
        (folder / "data_batch_3").unlink()
    elif setup == "wrong_row":
        folder, _ = make_batches_folder(path)
        write_batch(folder / "test_batch", np.zeros((4, 3, 16, 16), np.uint8), [0, 1, 2, 3])
    with pytest.raises(PenniError, match=message):
        load_cifar10(path, split, subset=subset)
