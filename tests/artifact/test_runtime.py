"""Artifacts load with the TVM runtime only, and refuse to load when they should."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from tiny_models import TINY_SHAPE, save_pt2

import penni_deploy
from penni_deploy.artifact.runtime import _missing_cpu_features
from penni_deploy.errors import ArtifactError, InputSpecError


def rewrite(src, dst, manifest_edit=None, library_edit=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "manifest.json" and manifest_edit:
                manifest = json.loads(data)
                manifest_edit(manifest)
                data = json.dumps(manifest).encode()
            if item == "model.so" and library_edit:
                data = library_edit(data)
            zout.writestr(item, data)
    return dst


def test_callable_on_numpy_and_torch(artifact):
    model = penni_deploy.load(artifact)
    x = np.random.default_rng(0).standard_normal(TINY_SHAPE).astype(np.float32)
    y = model(x)
    assert isinstance(y, np.ndarray) and y.shape == (2, 5)
    np.testing.assert_array_equal(model(torch.from_numpy(x)), y)


def test_each_call_returns_its_own_output(artifact):
    # Calls copy the input into one staging tensor per thread and return the VM's output without a
    # copy: an earlier result must survive later calls, and a result written to must not leak.
    model = penni_deploy.load(artifact)
    rng = np.random.default_rng(3)
    x1, x2 = (rng.standard_normal(TINY_SHAPE).astype(np.float32) for _ in range(2))
    y1 = model(x1)
    expected = y1.copy()
    y2 = model(x2)
    y2[...] = np.nan
    assert np.array_equal(y1, expected) and not np.array_equal(y1, model(x2))
    assert np.array_equal(model(x1), expected)
    strided = np.asfortranarray(x1)  # not C-contiguous: copied into the staging tensor as values
    assert np.array_equal(model(strided), expected)


def test_an_output_aliasing_the_staging_input_is_copied(artifact):
    model = penni_deploy.load(artifact)
    main, staging, staged = model._thread_entry()
    model._vms.entry = (lambda tensor: tensor, staging, staged)  # a program that returns its input
    x = np.ones(TINY_SHAPE, np.float32)
    y = model(x)
    model(np.zeros(TINY_SHAPE, np.float32))
    assert np.array_equal(y, x)


def test_loading_needs_neither_torch_nor_the_compiler(artifact):
    # torch is made unimportable (TVM itself imports it when present, and copes when it is not);
    # the compiler side of penni-deploy must not be imported at all.
    code = (
        "import sys, numpy as np\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import penni_deploy\n"
        f"m = penni_deploy.load({str(artifact)!r})\n"
        f"assert m(np.zeros({TINY_SHAPE}, np.float32)).shape == (2, 5)\n"
        "ours = [n for n in sys.modules if n.startswith(('penni_deploy.compiler', 'penni_deploy.frontend', "
        "'penni_deploy.passes', 'penni_deploy.models', 'penni_deploy.kernels'))]\n"
        "assert not ours, ours\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_wrong_shape_and_dtype(artifact):
    model = penni_deploy.load(artifact)
    with pytest.raises(InputSpecError, match="recompile with --input-shape 1,3,12,12"):
        model(np.zeros((1, 3, 12, 12), np.float32))
    with pytest.raises(InputSpecError, match="float64"):
        model(np.zeros(TINY_SHAPE, np.float64))


def test_truncated_artifact(artifact, tmp_path):
    cut = tmp_path / "cut.penni"
    cut.write_bytes(artifact.read_bytes()[:-5000])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        penni_deploy.load(cut)


def test_tampered_library(artifact, tmp_path):
    bad = rewrite(artifact, tmp_path / "bad.penni", library_edit=lambda b: b[:1000] + bytes([b[1000] ^ 1]) + b[1001:])
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        penni_deploy.load(bad)


def test_other_tvm_version(artifact, tmp_path):
    bad = rewrite(artifact, tmp_path / "v.penni", manifest_edit=lambda m: m.update(tvm_version="0.19.0"))
    with pytest.raises(ArtifactError, match="built with TVM 0.19.0"):
        penni_deploy.load(bad)


def test_other_target_device(artifact, tmp_path):
    def to_cuda(m):
        m["target"].update(name="cuda", device="cuda")

    bad = rewrite(artifact, tmp_path / "c.penni", manifest_edit=to_cuda)
    with pytest.raises(ArtifactError, match="compiled for target cuda"):
        penni_deploy.load(bad, device="cpu")


def test_cpu_without_the_isa_is_refused():
    assert _missing_cpu_features({"isa": "avx512"}, flags=["sse2", "avx2", "fma"]) == ["avx512f"]
    assert _missing_cpu_features({"isa": "avx2"}, flags=["avx2", "fma", "avx512f"]) == []


def test_unknown_format_version(artifact, tmp_path):
    bad = rewrite(artifact, tmp_path / "f.penni", manifest_edit=lambda m: m.update(format_version=99))
    with pytest.raises(ArtifactError, match="format version 99"):
        penni_deploy.load(bad)


def test_not_an_artifact(tmp_path):
    (tmp_path / "x.penni").write_text("hello")
    with pytest.raises(ArtifactError, match="not a readable penni-deploy artifact"):
        penni_deploy.load(tmp_path / "x.penni")


_RSS_PROBE = """
import json, sys
import numpy as np
def rss_mb():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
import tvm, penni_deploy
before = rss_mb()
model = penni_deploy.load(sys.argv[1])
added = rss_mb() - before
x = np.load(sys.argv[2])
np.save(sys.argv[3], model(x))
print(json.dumps({"added_mb": added, "library_mb": model.manifest.library["bytes"] / 2**20}))
"""


class _WideClassifier(torch.nn.Module):
    """Weights dominate: 24 MB of Linear against a few KB of code."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 32768)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_weights_are_held_once_after_loading(tmp_path):
    torch.manual_seed(0)
    model = _WideClassifier().eval()
    artifact = tmp_path / "wide.penni"
    penni_deploy.compile_model(str(save_pt2(model, tmp_path / "wide.pt2", shape=(1, 3, 8, 8))), str(artifact))
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(artifact), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, check=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # The embedded executable's pages are dropped once parsed: the weights stay in memory once (2× before).
    assert report["added_mb"] < 1.4 * report["library_mb"], report
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-4)
