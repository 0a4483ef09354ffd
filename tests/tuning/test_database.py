"""The tuning database: round trip through compile, reuse, resume after a kill, torn lines, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tiny_models import assert_matches_tiny_model

from penni_deploy.artifact.runtime import read_manifest
from penni_deploy.cli import main
from penni_deploy.errors import PenniError
from penni_deploy.frontend import load_model
from penni_deploy.kernels.config import KernelConfig
from penni_deploy.tuning import TuneOptions, TuningDatabase, tune_loaded
from penni_deploy.tuning.database import RECORDS, Record


def _keys(db):
    return [(r.workload, json.dumps(r.config, sort_keys=True)) for r in TuningDatabase(db)._records]


def test_tune_then_compile_uses_the_database(tmp_path, tiny_pt2, capsys):
    db = tmp_path / "db"
    assert main(["tune", str(tiny_pt2), "--db", str(db), "--trials", "6", "--dense-trials", "0"]) == 0
    out = capsys.readouterr().out
    assert "measured" in out and "penni-deploy compile" in out
    records = TuningDatabase(db)._records
    assert len(records) >= 3 and all(r.ms and r.ms > 0 for r in records)
    assert (db / "tuning_log.json").exists()

    artifact = tmp_path / "tuned.penni"
    assert main(["compile", str(tiny_pt2), "-o", str(artifact), "--tuning-db", str(db), "-q"]) == 0
    manifest = read_manifest(str(artifact))
    penni = [layer for layer in manifest.layers if layer["kind"] == "penni"]
    assert penni and all("(tuned" in layer["kernels"] for layer in penni), [lay["kernels"] for lay in penni]
    assert_matches_tiny_model(artifact, seed=0)

    # each layer runs the fastest config the database holds for it
    db_obj = TuningDatabase(db)
    best = {KernelConfig.from_json(db_obj.best(r.target, r.workload).config).describe()
            for r in db_obj._records if r.workload.startswith("penni-")}
    assert {layer["kernels"].split(" (tuned")[0] for layer in penni} == best

    # tuning the same model again measures nothing new
    assert main(["tune", str(tiny_pt2), "--db", str(db), "--trials", "6", "--dense-trials", "0"]) == 0
    assert len(TuningDatabase(db)._records) == len(records)
    assert "0 measured" in capsys.readouterr().out


def test_database_copies_to_another_folder_and_still_applies(tmp_path, tiny_pt2, x86):
    import shutil

    db = tmp_path / "db"
    tune_loaded(load_model(str(tiny_pt2)), str(db), x86, options=TuneOptions(trials=4))
    copy = tmp_path / "elsewhere"
    shutil.copytree(db, copy)
    assert _keys(copy) == _keys(db)
    artifact = tmp_path / "a.penni"
    assert main(["compile", str(tiny_pt2), "-o", str(artifact), "--tuning-db", str(copy), "-q"]) == 0
    assert any("(tuned" in layer["kernels"] for layer in read_manifest(str(artifact)).layers)


def test_torn_last_line_is_skipped_and_appends_continue(tmp_path):
    db = TuningDatabase(tmp_path / "db")
    db.add(Record("x86-t", "penni-a", KernelConfig().to_json(), 0.5, "layer a"))
    with open(db.records_path, "a") as f:
        f.write('{"target": "x86-t", "workload": "penni-b", "con')  # killed mid-write
    reread = TuningDatabase(tmp_path / "db")
    assert len(reread) == 1
    reread.add(Record("x86-t", "penni-a", KernelConfig(block=1).to_json(), 0.25, "layer a"))
    again = TuningDatabase(tmp_path / "db")
    assert len(again) == 2
    assert again.best_config("x86-t", "penni-a") == KernelConfig(block=1)
    assert again.best("x86-t", "penni-missing") is None


def test_a_killed_tune_resumes_without_measuring_twice(tmp_path, tiny_pt2):
    db = tmp_path / "db"
    cmd = [sys.executable, "-m", "penni_deploy.cli", "tune", str(tiny_pt2), "--db", str(db), "--trials", "16",
           "--dense-trials", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = db / RECORDS
    deadline = time.time() + 120
    while time.time() < deadline and (not records.exists() or len(records.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _keys(db)
    assert 3 <= len(before), "the killed run had written its first measurements"
    assert not (db / "tuning_log.json").exists(), "it was killed before finishing"

    assert subprocess.run(cmd, capture_output=True).returncode == 0
    after = _keys(db)
    assert after[: len(before)] == before
    assert len(after) == len(set(after)), "no config was measured twice"
    log = json.loads((db / "tuning_log.json").read_text())
    assert log["reused"] >= len(before) - 1 and log["measured"] + log["reused"] >= len(after) - 1


def test_compile_refuses_a_database_for_another_machine_kind(tmp_path, tiny_pt2):
    db = TuningDatabase(tmp_path / "db")
    db.add(Record("x86-otherchip-avx2-64t", "penni-a", KernelConfig().to_json(), 0.5))
    assert main(["compile", str(tiny_pt2), "-o", str(tmp_path / "a.penni"), "--tuning-db", str(db.path)]) == 2
    assert not (tmp_path / "a.penni").exists()


def test_missing_database_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PenniError, match="does not exist"):
        TuningDatabase(tmp_path / "nope", create=False)


def test_cuda_target_cannot_be_tuned(tmp_path, tiny_pt2, capsys):
    assert main(["tune", str(tiny_pt2), "--db", str(tmp_path / "db"), "--target", "cuda"]) == 2
    assert "tune with --target x86" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "db" / RECORDS)
