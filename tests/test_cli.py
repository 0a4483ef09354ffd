"""The command line, in-process through ``main``: the user's path end to end, and every bad input
getting a one-line error, a non-zero exit and no output file."""

import json

import numpy as np
import pytest
import torch
from tiny_models import TINY_SHAPE, WithUnsupportedOp, save_pt2, tiny_model

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
    assert main(["example", "resnet56-random97", "-o", str(tmp_path / "m.pt"), "--sample-input", str(tmp_path / "x.npy")]) == 0
    assert "RANDOM weights" in capsys.readouterr().err
    assert np.load(tmp_path / "x.npy").shape == (1, 3, 32, 32)


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
