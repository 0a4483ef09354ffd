"""The C++ runner (cpp/, build/cpp/penni-run): built against the wheel's TVM runtime with no
Python, it matches the Python runtime on CIFAR ResNet18 and ResNet56 artifacts and refuses what
the Python loader refuses, signatures included, before loading any native code."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from signing_helpers import flip_byte, marker_library, rewrite, write_key_pair
from tiny_models import TINY_SHAPE, save_pt2, tiny_model

import penni_deploy
from penni_deploy.artifact.manifest import FORMAT_VERSION
from penni_deploy.compiler import CompileOptions
from penni_deploy.machine import cpu_flags
from penni_deploy.artifact.signing import TRUSTED_KEY_ENV, sign_artifact
from penni_deploy.frontend.load_model import ZOO_INPUT_SHAPE
from penni_deploy.models.examples import make_example

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """Build penni-run once per session (build_cpp.sh installs cmake/compiler/headers if missing)."""
    build = ROOT / "build" / "cpp"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "build_cpp.sh")], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHON": sys.executable, "BUILD_DIR": str(build)})
    assert result.returncode == 0, f"bash scripts/build_cpp.sh failed:\n{result.stdout}\n{result.stderr}"
    return build / "penni-run"


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch):
    monkeypatch.delenv(TRUSTED_KEY_ENV, raising=False)


def penni_run(runner, *args, env=None):
    return subprocess.run([str(runner), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None})


def one_line_error(result):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# --- equal to the Python runtime on the two paper-sized models ---------------------------------

@pytest.fixture(scope="module", params=["resnet18-random97", "resnet56-random97"])
def example_artifact(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model = folder / "model.pt2"
    torch.export.save(torch.export.export(make_example(request.param), (torch.zeros(ZOO_INPUT_SHAPE),)), str(model))
    artifact = folder / "model.penni"
    penni_deploy.compile_model(str(model), str(artifact), batch=1)
    return artifact


def test_matches_the_python_runtime(runner, example_artifact, tmp_path):
    x = np.random.default_rng(0).standard_normal(ZOO_INPUT_SHAPE).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = penni_run(runner, example_artifact, tmp_path / "x.npy", tmp_path / "y.npy", "--repeat", "5")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^median \d+\.\d+ ms over 5 runs", result.stdout, re.M), result.stdout
    y = np.load(tmp_path / "y.npy")
    expected = penni_deploy.load(example_artifact)(x)
    assert y.shape == expected.shape == (1, 10) and y.dtype == np.float32
    # The same kernels on the same input: equal up to the order of parallel float sums, if any.
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.skipif("avx512_bf16" not in (cpu_flags() or []), reason="this CPU has no AVX512_BF16")
def test_runs_a_bf16_artifact_like_python(runner, tmp_path):
    model = save_pt2(tiny_model(), tmp_path / "tiny.pt2")
    artifact = tmp_path / "tiny-bf16.penni"
    penni_deploy.compile_model(str(model), str(artifact), options=CompileOptions(precision="bf16"))
    x = np.random.default_rng(1).standard_normal(TINY_SHAPE).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = penni_run(runner, artifact, tmp_path / "x.npy", tmp_path / "y.npy")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), penni_deploy.load(artifact)(x), rtol=1e-6, atol=1e-6)


# --- the build ---------------------------------------------------------------------------------

def test_links_the_runtime_only(runner):
    linked = subprocess.run(["ldd", str(runner)], capture_output=True, text=True, check=True).stdout
    assert "libtvm_runtime.so" in linked and "libtvm_ffi.so" in linked
    assert "libpython" not in linked and "libtvm_compiler" not in linked and "libtvm.so" not in linked
    assert "not found" not in linked, linked


def test_version_agrees_with_python(runner):
    import tvm

    out = penni_run(runner, "--version").stdout
    assert out.strip() == f"penni-run: artifact format {FORMAT_VERSION}, TVM {tvm.__version__}"


# --- small artifacts for options and refusals -------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    artifact = folder / "tiny.penni"
    penni_deploy.compile_model(str(save_pt2(tiny_model(), folder / "tiny.pt2")), str(artifact))
    x = np.random.default_rng(1).standard_normal(TINY_SHAPE).astype(np.float32)
    np.save(folder / "x.npy", x)
    return {"artifact": artifact, "x": folder / "x.npy", "folder": folder}


@pytest.fixture(scope="module")
def keys(tiny):
    alice, mallory = write_key_pair(tiny["folder"], "alice"), write_key_pair(tiny["folder"], "mallory")
    signed = tiny["folder"] / "signed.penni"
    signed.write_bytes(tiny["artifact"].read_bytes())
    sign_artifact(signed, alice[0])
    return {"alice": alice, "mallory": mallory, "signed": signed}


def test_threads_default_to_usable_cores_and_can_be_set(runner, tiny, tmp_path):
    default = penni_run(runner, tiny["artifact"], tiny["x"], tmp_path / "y.npy", env={"TVM_NUM_THREADS": None})
    assert f"{len(os.sched_getaffinity(0))} threads" in default.stderr, default.stderr
    one = penni_run(runner, tiny["artifact"], tiny["x"], tmp_path / "y1.npy", "--threads", "1")
    assert "(cpu, 1 threads, penni pool)" in one.stderr, one.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y1.npy"), np.load(tmp_path / "y.npy"))
    tvm_pool = penni_run(runner, tiny["artifact"], tiny["x"], tmp_path / "y2.npy", "--threads", "2",
                         env={"PENNI_THREAD_POOL": "tvm"})
    assert "(cpu, 2 threads, tvm pool)" in tvm_pool.stderr, tvm_pool.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y2.npy"), np.load(tmp_path / "y.npy"))


def test_signed_artifact_runs_with_its_key(runner, tiny, keys, tmp_path):
    result = penni_run(runner, keys["signed"], tiny["x"], tmp_path / "y.npy", "--trusted-key", keys["alice"][1])
    assert result.returncode == 0, result.stderr
    expected = penni_deploy.load(tiny["artifact"])(np.load(tiny["x"]))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6, atol=1e-6)
    by_env = penni_run(runner, keys["signed"], tiny["x"], tmp_path / "y2.npy",
                       env={TRUSTED_KEY_ENV: str(keys["alice"][1])})
    assert by_env.returncode == 0, by_env.stderr


def _stored_with_bad_crc(tiny, keys, tmp_path):
    # Stored (not deflated) entries, so one flipped byte in the file is one flipped library byte.
    stored = rewrite(tiny["artifact"], tmp_path / "crc.penni", compression=zipfile.ZIP_STORED)
    data = bytearray(stored.read_bytes())
    with zipfile.ZipFile(stored) as z:
        info = z.getinfo("model.so")
    extra = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    data[info.header_offset + 30 + len("model.so") + extra + 500] ^= 1
    stored.write_bytes(bytes(data))
    return stored


def _signed_by(name):
    def make(tiny, keys, tmp_path):
        out = tmp_path / f"by-{name}.penni"
        out.write_bytes(tiny["artifact"].read_bytes())
        sign_artifact(out, keys[name][0])
        return out
    return make


REFUSALS = {
    # case: (make the artifact, trusted key or None, via $PENNI_TRUSTED_KEY?, message)
    "bad-crc": (_stored_with_bad_crc, None, False, "corrupt or truncated: Bad CRC-32 for file 'model.so'"),
    "truncated": (lambda t, k, p: _write(p / "cut.penni", t["artifact"].read_bytes()[:-5000]), None, False,
                  "corrupt or truncated"),
    "not-a-zip": (lambda t, k, p: _write(p / "x.penni", b"hello"), None, False, "not a readable penni-deploy artifact"),
    "wrong-sha": (lambda t, k, p: rewrite(t["artifact"], p / "sha.penni", library_edit=flip_byte), None, False,
                  "the library does not match the sha256 in its manifest"),
    "other-tvm": (lambda t, k, p: rewrite(t["artifact"], p / "tvm.penni",
                                          manifest_edit=lambda m: m.update(tvm_version="0.19.0")), None, False,
                  "artifact was built with TVM 0.19.0"),
    "other-format": (lambda t, k, p: rewrite(t["artifact"], p / "fmt.penni",
                                             manifest_edit=lambda m: m.update(format_version=99)), None, False,
                     "artifact format version 99 is not supported"),
    "unsigned-with-key": (lambda t, k, p: t["artifact"], "alice", False,
                          "is not signed, and a trusted key is required"),
    "unsigned-with-env-key": (lambda t, k, p: t["artifact"], "alice", True, "is not signed"),
    "other-key": (_signed_by("mallory"), "alice", False, "is signed by another key"),
    "other-key-by-env": (_signed_by("mallory"), "alice", True, "is signed by another key"),
    "tampered-library": (lambda t, k, p: rewrite(k["signed"], p / "lib.penni", library_edit=flip_byte, fix_sha=True),
                         "alice", False, "signature does not match the manifest and library"),
    "tampered-manifest": (lambda t, k, p: rewrite(k["signed"], p / "man.penni",
                                                  manifest_edit=lambda m: m.update(producer="someone")),
                          "alice", False, "signature does not match the manifest and library"),
    "private-key-as-trusted": (lambda t, k, p: k["signed"], "alice-private", False, "is a private key"),
}


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals(case, runner, tiny, keys, tmp_path):
    make, key_name, by_env, message = REFUSALS[case]
    artifact = make(tiny, keys, tmp_path)
    key = {None: None, "alice": keys["alice"][1], "alice-private": keys["alice"][0]}[key_name]
    args, env = [], {}
    if key and by_env:
        env[TRUSTED_KEY_ENV] = str(key)
    elif key:
        args = ["--trusted-key", key]
    out = tmp_path / "y.npy"
    result = penni_run(runner, artifact, tiny["x"], out, *args, env=env)
    assert message in one_line_error(result)
    assert not out.exists() and not list(tmp_path.glob("y.npy*"))


def test_gpu_artifact_without_a_gpu(runner, tiny, tmp_path):
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this machine has an NVIDIA GPU; the no-GPU refusal cannot be shown here")

    def to_cuda(m):
        m["target"].update(name="cuda", device="cuda")
        m["library"]["gpu_code"] = ["sm_80"]

    artifact = rewrite(tiny["artifact"], tmp_path / "gpu.penni", manifest_edit=to_cuda)
    result = penni_run(runner, artifact, tiny["x"], tmp_path / "y.npy")
    assert "no CUDA device is available here" in one_line_error(result)


def test_a_refused_library_never_runs(runner, tiny, keys, tmp_path):
    # A library whose load-time constructor leaves a file stands in for hostile native code.
    marker = tmp_path / "ran"
    evil = marker_library(tmp_path)
    crafted = rewrite(tiny["artifact"], tmp_path / "evil.penni", library_edit=lambda _: evil, fix_sha=True)
    sign_artifact(crafted, keys["mallory"][0])
    refused = penni_run(runner, crafted, tiny["x"], tmp_path / "y.npy", "--trusted-key", keys["alice"][1],
                        env={"PENNI_TEST_MARKER": str(marker)})
    assert "is signed by another key" in one_line_error(refused)
    assert not marker.exists()
    loaded = penni_run(runner, crafted, tiny["x"], tmp_path / "y.npy", env={"PENNI_TEST_MARKER": str(marker)})
    assert "is not a Relax VM executable" in one_line_error(loaded)
    assert marker.exists()  # without a key the library is loaded, and its code runs


@pytest.mark.parametrize("make_input, message", [
    (lambda p: np.save(p, np.zeros(TINY_SHAPE, np.float64)), "holds <f8 data, but this runner takes float32"),
    (lambda p: np.save(p, np.asfortranarray(np.zeros(TINY_SHAPE, np.float32))), "is in Fortran order"),
    (lambda p: np.save(p, np.zeros((1, 3, 12, 12), np.float32)), "recompile with --input-shape 1,3,12,12"),
    (lambda p: p.write_bytes(b"not an array"), "it is not a .npy file"),
], ids=["float64", "fortran", "shape", "garbage"])
def test_bad_inputs(make_input, message, runner, tiny, tmp_path):
    x = tmp_path / "x.npy"
    make_input(x)
    result = penni_run(runner, tiny["artifact"], x, tmp_path / "y.npy")
    assert message in one_line_error(result)
    assert not (tmp_path / "y.npy").exists()


def test_usage_errors(runner, tiny, tmp_path):
    assert "takes ARTIFACT IN.npy OUT.npy" in one_line_error(penni_run(runner, tiny["artifact"]))
    assert "--repeat 0 must be a positive integer" in one_line_error(
        penni_run(runner, tiny["artifact"], tiny["x"], tmp_path / "y.npy", "--repeat", "0"))
    assert "unknown option --fast" in one_line_error(penni_run(runner, "--fast"))
