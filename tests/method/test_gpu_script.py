"""``scripts/gpu_compress.py``, the command prepared for a lent GPU, end to end on the CPU with a tiny
subset: the fast data path under bf16 and channels-last, a time budget far too short for the preset's
epochs, and every output it promises (the model records its input shape and preprocessing). The
script blocks TVM from being imported, so this also checks that training never needs it. The
throughput probe is tested on its own, on a tiny network (first calls of each conv shape cost
seconds on a CPU)."""

import gzip
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "cifar10-jpeg")
SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "gpu_compress.py")
BUDGET = 30.0


@pytest.mark.skipif(not os.path.isdir(DATA), reason="the CIFAR-10 JPEG copy is not beside the checkout")
def test_gpu_script_on_a_tiny_subset_within_its_budget(tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, SCRIPT, "--data", DATA, "--out", str(out), "--device", "cpu", "--arch", "resnet20",
            "--subset", "40", "--test-subset", "20", "--batch-size", "20", "--baseline-epochs", "300",
            "--retrain-epochs", "300", "--finetune-epochs", "100", "--bf16", "--channels-last", "--probe-steps", "0",
            "--budget", str(BUDGET), "--reserve", "10", "--work-dir", str(tmp_path / "work")]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=""))
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert wall < BUDGET + 45  # 700 planned epochs would take minutes even on a fast CPU: the budget cut them

    assert sorted(os.listdir(out)) == ["gpu_compress.log", "resnet20-penni.pt.gz", "resnet20-penni.state_dict.pt.gz",
                                       "resnet20-penni.summary.json", "resnet20-penni.summary.png"]
    summary = json.loads((out / "resnet20-penni.summary.json").read_text())
    run = summary["run"]
    assert run["complete"] and run["train_precision"] == "bf16 autocast" and run["memory_format"] == "channels_last"
    assert run["data_path"].startswith("device-resident") and 0 < run["time_budget_s"] < BUDGET
    assert summary["config"]["preset"] == "paper-fast" and summary["config"]["interval"] == 2
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["baseline", "decompose", "retrain", "prune", "finetune", "shrink"]
    for name, planned in (("baseline", 300), ("retrain", 300), ("finetune", 100)):
        assert stages[name]["planned_epochs"] == planned and 1 <= stages[name]["epochs"] < planned, name
        assert stages[name]["train_images_per_s"] > 0
    assert all(s["eval_images_per_s"] > 0 for s in stages.values())

    assert summary["config"]["penni_train_form"] == "two_stage"  # no probe, no --penni-train-form

    model_file = tmp_path / "m.pt"
    model_file.write_bytes(gzip.decompress((out / "resnet20-penni.pt.gz").read_bytes()))
    extra = {"penni_input_shape.json": "", "penni_preprocessing.json": ""}
    model = torch.jit.load(str(model_file), _extra_files=extra)
    assert json.loads(extra["penni_input_shape.json"]) == [1, 3, 32, 32]
    assert json.loads(extra["penni_preprocessing.json"]) == {"mean": [0.4914, 0.4822, 0.4465],
                                                             "std": [0.2023, 0.1994, 0.201]}
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    log = (out / "gpu_compress.log").read_text()
    assert "shrink" in log and "TVM imported: False" in log
    assert not (tmp_path / "work").exists()  # a one-shot run spends no time on checkpoints


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_compress", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_times_dense_and_both_penni_forms():
    def tiny():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    lines = []
    probe = load_script().probe_throughput(tiny, (3, 8, 8), [2, 4], 2, "cpu", True, True, lines.append)
    assert [(r["model"], r["batch"]) for r in probe["results"]] == [
        ("dense", 2), ("penni two_stage", 2), ("penni dense", 2), ("dense", 4), ("penni two_stage", 4),
        ("penni dense", 4)]
    assert all(r["images_per_s"] > 0 and r["steps"] == 2 for r in probe["results"]) and len(lines) == 6
    assert probe["bf16"] and probe["channels_last"]


def test_pack_splits_what_the_gpu_machine_would_not_return(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "MAX_RETURNED_BYTES", 1000)
    data = os.urandom(2500)  # incompressible: the .gz stays over the limit
    (tmp_path / "m.pt").write_bytes(data)
    parts = script.pack(str(tmp_path / "m.pt"))
    assert [os.path.basename(p) for p in parts] == ["m.pt.gz.part0", "m.pt.gz.part1", "m.pt.gz.part2"]
    assert gzip.decompress(b"".join(open(p, "rb").read() for p in parts)) == data
    assert not (tmp_path / "m.pt").exists()
