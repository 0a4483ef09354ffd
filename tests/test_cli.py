"""The command line, in-process through ``main``: the user's path end to end, and every bad input
getting a one-line error, a non-zero exit and no output file."""

import json
import os
import stat
import struct
import zipfile

import numpy as np
import pytest
import torch
from tiny_models import TINY_SHAPE, WithUnsupportedOp, save_pt2, tiny_model

import penni_deploy
from penni_deploy.cli import main


@pytest.fixture(scope="module")
def tiny_pt2(tmp_path_factory):
    return save_pt2(tiny_model(), tmp_path_factory.mktemp("tiny") / "tiny.pt2")


@pytest.fixture(scope="module")
def tiny_artifact(tiny_pt2):
    out = tiny_pt2.with_suffix(".penni")
    assert main(["compile", str(tiny_pt2), "-o", str(out), "--quiet"]) == 0
    return out


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_compile_run_inspect(tiny_pt2, tmp_path, capsys):
    artifact = tmp_path / "tiny.penni"
    assert main(["compile", str(tiny_pt2), "-o", str(artifact), "--report", "--quiet"]) == 0
    report = capsys.readouterr().out
    assert "penni" in report and "dense_conv" in report and "MACs per image" in report

    x = np.random.default_rng(0).standard_normal(TINY_SHAPE).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(artifact), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    with torch.inference_mode():
        expected = torch.export.load(str(tiny_pt2)).module()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

    assert main(["inspect", str(artifact), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["inputs"][0]["shape"] == list(TINY_SHAPE)
    assert manifest["target"]["name"] == "x86" and manifest["tvm_version"]
    assert len(manifest["layers"]) == 3 and manifest["source"]["format"] == "pt2"
    assert main(["inspect", str(artifact)]) == 0
    assert "target       x86" in capsys.readouterr().out


def test_example_command_writes_a_compilable_model(tmp_path, capsys):
    model, x_path = tmp_path / "m.pt", tmp_path / "x.npy"
    assert main(["example", "resnet56-random97", "-o", str(model), "--sample-input", str(x_path)]) == 0
    assert "RANDOM weights" in capsys.readouterr().err
    x = np.load(x_path)
    assert x.shape == (1, 3, 32, 32)
    # the written file compiles as documented (input shape recorded) and computes what it says
    artifact = tmp_path / "m.penni"
    assert main(["compile", str(model), "-o", str(artifact), "--quiet"]) == 0
    assert main(["run", str(artifact), "-i", str(x_path), "-o", str(tmp_path / "y.npy")]) == 0
    with torch.inference_mode():
        expected = torch.jit.load(str(model))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _corrupt(path):
    path.write_bytes(b"\x00not a model\x00" * 10)


def _truncated(tiny_pt2):
    def make(path):
        data = tiny_pt2.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return make


def _pickle(path):
    torch.save(tiny_model(), path)


def _unsupported(path):
    save_pt2(tiny_model(WithUnsupportedOp), path)


BAD_MODELS = {
    "corrupt": (_corrupt, [], "not a model file"),
    "pickle-untrusted": (_pickle, [], "--trust-pickle"),
    "unsupported-op": (_unsupported, [], "unsupported op(s): lgamma"),
    "bad-shape-option": (None, ["--input-shape", "1,3,x"], "--input-shape"),
    "unknown-target": (None, ["--target", "fpga"], "unknown target 'fpga'"),
    "unknown-mcpu": (None, ["--mcpu", "pentium-9000"], "unknown x86 CPU"),
    "missing-file": ("missing", [], "no such model file"),
}


@pytest.mark.parametrize("case", BAD_MODELS.values(), ids=BAD_MODELS.keys())
def test_bad_model_inputs(case, tiny_pt2, tmp_path, capsys):
    make, extra, message = case
    model = tmp_path / "model.bin"
    if make is None:
        model = tiny_pt2
    elif make != "missing":
        make(model)
    out = tmp_path / "out.penni"
    assert main(["compile", str(model), "-o", str(out), "--quiet", *extra]) != 0
    assert message in one_line_error(capsys)
    assert not out.exists() and not list(tmp_path.glob(".penni-*"))  # nothing half-written


def test_truncated_model(tiny_pt2, tmp_path, capsys):
    model = tmp_path / "cut.pt2"
    _truncated(tiny_pt2)(model)
    assert main(["compile", str(model), "-o", str(tmp_path / "out.penni"), "--quiet"]) != 0
    assert "corrupt or truncated" in one_line_error(capsys)
    assert not (tmp_path / "out.penni").exists()


def test_unsupported_op_error_says_where(tmp_path, capsys):
    model = save_pt2(tiny_model(WithUnsupportedOp), tmp_path / "u.pt2")
    assert main(["compile", str(model), "-o", str(tmp_path / "o.penni"), "--quiet"]) != 0
    assert "lgamma.default (at " in one_line_error(capsys)


BAD_INPUTS = {
    "wrong-shape": (np.zeros((1, 3, 12, 12), np.float32), "input shape is (1, 3, 12, 12)"),
    "wrong-dtype": (np.zeros(TINY_SHAPE, np.float64), "input dtype is float64"),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_run_rejects_bad_input(case, tiny_artifact, tmp_path, capsys):
    array, message = case
    np.save(tmp_path / "x.npy", array)
    out = tmp_path / "y.npy"
    assert main(["run", str(tiny_artifact), "-i", str(tmp_path / "x.npy"), "-o", str(out)]) != 0
    assert message in one_line_error(capsys)
    assert not out.exists()


def test_run_rejects_non_npy_input(tiny_artifact, tmp_path, capsys):
    (tmp_path / "x.npy").write_text("hello")
    assert main(["run", str(tiny_artifact), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) != 0
    assert "cannot read" in one_line_error(capsys)


@pytest.mark.parametrize("mcpu, isa", [("haswell", "avx2"), ("skylake-avx512", "avx512")])
def test_cross_build_for_named_cpu(mcpu, isa, tiny_pt2, tmp_path, capsys):
    out = tmp_path / f"{mcpu}.penni"
    assert main(["compile", str(tiny_pt2), "-o", str(out), "--mcpu", mcpu, "--quiet"]) == 0
    assert main(["inspect", str(out), "--json"]) == 0
    target = json.loads(capsys.readouterr().out)["target"]
    assert (target["mcpu"], target["isa"], target["mtriple"]) == (mcpu, isa, "x86_64-linux-gnu")


def test_usage_error_exits_nonzero(capsys):
    assert main(["compile"]) == 2  # missing MODEL
    assert "Missing argument" in capsys.readouterr().err


# --- bad inputs that used to end in a traceback (issue 12) ---------------------------------------


@pytest.mark.parametrize("batch", ["0", "-3"])
def test_compile_refuses_a_batch_below_one(batch, tiny_pt2, tmp_path, capsys):
    out = tmp_path / "out.penni"
    assert main(["compile", str(tiny_pt2), "-o", str(out), "--batch", batch, "--quiet"]) == 2
    assert f"--batch {batch} must be a positive batch size" in one_line_error(capsys)
    assert not out.exists() and not list(tmp_path.glob(".penni-*"))


def test_run_output_in_a_missing_folder(tiny_artifact, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros(TINY_SHAPE, np.float32))
    out = tmp_path / "no-such-folder" / "y.npy"
    assert main(["run", str(tiny_artifact), "-i", str(tmp_path / "x.npy"), "-o", str(out)]) == 2
    assert "folder" in (line := one_line_error(capsys)) and "does not exist" in line and "mkdir -p" in line
    assert not out.parent.exists()


@pytest.mark.parametrize("where", ["parent-is-a-file", "grandparent-is-a-file", "output-is-a-folder"])
def test_compile_output_that_cannot_be_a_file(where, tiny_pt2, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("a file")
    out = {"parent-is-a-file": tmp_path / "file.txt" / "m.penni",
           "grandparent-is-a-file": tmp_path / "file.txt" / "sub" / "m.penni",
           "output-is-a-folder": tmp_path}[where]
    assert main(["compile", str(tiny_pt2), "-o", str(out), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert ("is a folder, not a file" if where == "output-is-a-folder" else "file.txt is a file, not a folder") in line
    assert (tmp_path / "file.txt").read_text() == "a file" and not list(tmp_path.glob(".penni-*"))


def test_compile_creates_missing_output_folders(tiny_artifact, tiny_pt2, tmp_path):
    out = tmp_path / "a" / "b" / "m.penni"
    assert main(["compile", str(tiny_pt2), "-o", str(out), "--quiet"]) == 0
    assert out.read_bytes()[:2] == b"PK"


def test_artifact_follows_the_umask(tiny_pt2, tmp_path):
    # mkstemp made every artifact 0600 whatever the umask, unreadable by a deploying service account
    out = tmp_path / "m.penni"
    previous = os.umask(0o027)
    try:
        assert main(["compile", str(tiny_pt2), "-o", str(out), "--quiet"]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def _stored_copy(src, dst, manifest_edit=None, drop_library=False):
    """``src`` rewritten uncompressed (so a byte of the library can be flipped in place)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "manifest.json" and manifest_edit:
                manifest = json.loads(data)
                manifest_edit(manifest)
                data = json.dumps(manifest).encode()
            if not (name == "model.so" and drop_library):
                zout.writestr(name, data)
    return dst


def _bad_crc(src, dst):
    _stored_copy(src, dst)
    with zipfile.ZipFile(dst) as archive:
        info = archive.getinfo("model.so")
    blob = bytearray(dst.read_bytes())
    # local header: 30 bytes, then the name and the extra field, then the data
    name_len, extra_len = struct.unpack_from("<HH", blob, info.header_offset + 26)
    blob[info.header_offset + 30 + name_len + extra_len + 1000] ^= 0xFF
    dst.write_bytes(bytes(blob))


def _set_input_shape(shape):
    def edit(manifest):
        manifest["inputs"][0]["shape"] = shape
    return edit


BAD_ARTIFACTS = {
    "bad-crc": (_bad_crc, "Bad CRC-32"),
    "missing-library": (lambda src, dst: _stored_copy(src, dst, drop_library=True), "lacks its library 'model.so'"),
    "library-name-not-in-archive": (
        lambda src, dst: _stored_copy(src, dst, manifest_edit=lambda m: m["library"].update(file="other.so")),
        "lacks its library 'other.so'"),
    "negative-input-shape": (lambda src, dst: _stored_copy(src, dst, manifest_edit=_set_input_shape([-2, 3, 12, 12])),
                             "has shape [-2, 3, 12, 12]"),
}


@pytest.mark.parametrize("case", BAD_ARTIFACTS.values(), ids=BAD_ARTIFACTS.keys())
def test_inspect_refuses_what_run_refuses(case, tiny_artifact, tmp_path, capsys):
    make, message = case
    bad = tmp_path / "bad.penni"
    make(tiny_artifact, bad)
    assert main(["inspect", str(bad)]) == 2
    assert message in one_line_error(capsys)
    np.save(tmp_path / "x.npy", np.zeros(TINY_SHAPE, np.float32))
    assert main(["run", str(bad), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "y.npy").exists()


def test_inspect_reports_another_tvm_version_instead_of_refusing(tiny_artifact, tmp_path, capsys):
    other = _stored_copy(tiny_artifact, tmp_path / "v.penni", manifest_edit=lambda m: m.update(tvm_version="0.19.0"))
    assert main(["inspect", str(tiny_artifact)]) == 0
    assert "runs here    yes" in capsys.readouterr().out
    assert main(["inspect", str(other)]) == 0
    assert "runs here    no: artifact was built with TVM 0.19.0" in capsys.readouterr().out
    assert main(["inspect", str(other), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["tvm_version"] == "0.19.0" and "TVM 0.19.0" in captured.err
    np.save(tmp_path / "x.npy", np.zeros(TINY_SHAPE, np.float32))
    assert main(["run", str(other), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 2
    assert "built with TVM 0.19.0" in one_line_error(capsys)


def test_pt2_compiles_for_another_batch(tmp_path):
    # exported at batch 2 (TINY_SHAPE), compiled for 3: the program is exported again at the new batch
    model = save_pt2(tiny_model(), tmp_path / "b2.pt2")
    out = tmp_path / "b3.penni"
    assert main(["compile", str(model), "-o", str(out), "--batch", "3", "--quiet"]) == 0
    x = np.random.default_rng(1).standard_normal((3,) + TINY_SHAPE[1:]).astype(np.float32)
    with torch.inference_mode():
        expected = tiny_model()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(penni_deploy.load(out)(x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


class FlattensWithTheBatchBakedIn(torch.nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1).sum(1, keepdim=True)  # exported at batch 1: view(x, [1, -1])


def test_pt2_whose_graph_fixes_the_batch_is_refused_for_another(tmp_path, capsys):
    model = save_pt2(FlattensWithTheBatchBakedIn(), tmp_path / "fixed.pt2", shape=(1, 3, 4, 4))
    out = tmp_path / "o.penni"
    assert main(["compile", str(model), "-o", str(out), "--batch", "2", "--quiet"]) == 2
    assert "cannot be compiled for batch 2: export it with a dynamic batch" in one_line_error(capsys)
    assert not out.exists()
