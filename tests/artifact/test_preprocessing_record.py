"""The preprocessing a model file records (mean and std of [0, 1] pixels) reaches the artifact's manifest
and ``inspect``; a model without the record gets a manifest that says nothing about it."""

import json
import logging
import zipfile

import pytest
import torch
from tiny_models import TINY_SHAPE, tiny_model

import penni_deploy
from penni_deploy.artifact.manifest import Manifest, TensorSpec
from penni_deploy.cli import main
from penni_deploy.data.input_record import INPUT_SHAPE_EXTRA, PREPROCESSING_EXTRA, Preprocessing
from penni_deploy.frontend import load_model

RECORD = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.201]}


def save_torchscript(path, preprocessing: str | None):
    extra = {INPUT_SHAPE_EXTRA: json.dumps(list(TINY_SHAPE))}
    if preprocessing is not None:
        extra[PREPROCESSING_EXTRA] = preprocessing
    torch.jit.save(torch.jit.trace(tiny_model(), torch.zeros(TINY_SHAPE)), str(path), _extra_files=extra)
    return path


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "not-recorded"])
def test_manifest_and_inspect_carry_the_record_only_when_the_file_has_one(tmp_path, capsys, recorded):
    model = save_torchscript(tmp_path / "m.pt", json.dumps(RECORD) if recorded else None)
    artifact = tmp_path / "m.penni"
    manifest = penni_deploy.compile_model(str(model), str(artifact))
    with zipfile.ZipFile(artifact) as archive:
        raw = json.loads(archive.read("manifest.json"))
    if recorded:
        assert raw["preprocessing"] == RECORD and manifest.preprocessing == RECORD
    else:
        assert "preprocessing" not in raw and manifest.preprocessing is None
    assert main(["inspect", str(artifact)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("preprocess")]
    assert lines == (["preprocess   (pixel / 255 - mean) / std per channel, mean [0.4914, 0.4822, 0.4465], "
                      "std [0.2023, 0.1994, 0.201]"] if recorded else [])


@pytest.mark.parametrize("text", ['{"mean": [0.5]}', '{"mean": [0.5, 0.5], "std": [1.0]}',
                                  '{"mean": [0.5], "std": [0.0]}', '{"mean": ["a"], "std": [1]}', "not json"],
                         ids=["no-std", "lengths-differ", "zero-std", "not-numbers", "not-json"])
def test_a_malformed_record_is_ignored_with_a_warning(tmp_path, caplog, text):
    model = save_torchscript(tmp_path / "m.pt", text)
    with caplog.at_level(logging.WARNING):
        loaded = load_model(str(model))
    assert loaded.preprocessing is None and PREPROCESSING_EXTRA in caplog.text


def test_a_recorded_pt2_file_is_read_too(tmp_path):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(tiny_model(), (torch.zeros(TINY_SHAPE),)), str(path),
                      extra_files={PREPROCESSING_EXTRA: json.dumps(RECORD)})
    assert load_model(str(path)).preprocessing == Preprocessing.from_values(RECORD["mean"], RECORD["std"])


def test_manifest_json_round_trip():
    io = dict(inputs=[TensorSpec("x", [1, 3, 8, 8], "float32")], outputs=[TensorSpec("y", [1, 10], "float32")],
              library={"file": "model.so", "sha256": "0" * 64, "bytes": 1})
    manifest = Manifest(1, "p", "t", {}, source={}, pipeline="penni", preprocessing=RECORD, **io)
    assert Manifest.from_json(manifest.to_json()).preprocessing == RECORD
    bare = Manifest(1, "p", "t", {}, source={}, pipeline="penni", **io)
    assert "preprocessing" not in json.loads(bare.to_json())
    assert Manifest.from_json(bare.to_json()).preprocessing is None
