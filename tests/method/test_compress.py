"""A tiny end-to-end ``compress`` on a few hundred images of the CIFAR-10 JPEG copy; its output compiles."""

import json
import os
import re

import numpy as np
import pytest
import torch

import penni_deploy
from penni_deploy.cli import main

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "cifar10-jpeg")


@pytest.mark.skipif(not os.path.isdir(DATA), reason="the CIFAR-10 JPEG copy is not beside the checkout")
def test_compress_end_to_end_then_compile(tmp_path, capsys):
    out = tmp_path / "resnet20-penni.pt"
    argv = ["compress", "--arch", "resnet20", "--data", DATA, "-o", str(out), "--subset", "200", "--test-subset", "100",
            "--baseline-epochs", "1", "--retrain-epochs", "2", "--finetune-epochs", "1", "--interval", "1",
            "--batch-size", "50"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["baseline", "decompose", "retrain", "prune", "finetune", "shrink"]

    summary = json.loads((tmp_path / "resnet20-penni.summary.json").read_text())
    stages = {s["stage"]: s for s in summary["stages"]}
    assert stages["prune"]["coef_density"] < stages["retrain"]["coef_density"]
    assert stages["shrink"]["effective_params"] <= stages["finetune"]["effective_params"]
    assert stages["shrink"]["accuracy"] == stages["finetune"]["accuracy"]  # shrink is exact
    assert (tmp_path / "resnet20-penni.summary.png").read_bytes()[:4] == b"\x89PNG"

    # Resuming finds every stage done: no epoch is trained again (the checkpoints stay as they were)
    # and the same model and summaries come out.
    work = tmp_path / "resnet20-penni.work"
    checkpoints = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in work.glob("*.pt")}
    assert sorted(checkpoints) == ["baseline.pt", "finetune.pt", "retrain.pt"]
    assert main(argv + ["--resume"]) == 0
    resumed = capsys.readouterr()
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in work.glob("*.pt")} == checkpoints
    for stage, epochs in (("baseline", 1), ("retrain", 2), ("finetune", 1)):
        assert f"[{stage}] resuming after epoch {epochs}" in resumed.err
    assert "loss" not in resumed.err  # no training progress at all
    def without_seconds(summary_lines):
        # the measurements before the stage's wall time and rates, which a resumed run does not repeat
        return [re.split(r"  \d+s\b", line)[0] for line in summary_lines]

    assert without_seconds(resumed.out.strip().splitlines()) == without_seconds(lines)
    again = json.loads((tmp_path / "resnet20-penni.summary.json").read_text())
    assert [s["accuracy"] for s in again["stages"]] == [s["accuracy"] for s in summary["stages"]]

    artifact = tmp_path / "m.penni"
    manifest = penni_deploy.compile_model(str(out), str(artifact))
    # The normalization the network was trained with travels from the model file into the manifest.
    assert manifest.preprocessing == {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.201]}
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        expected = torch.jit.load(str(out))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(penni_deploy.load(artifact)(x), expected, atol=1e-4 * np.abs(expected).max())
    state = torch.load(tmp_path / "resnet20-penni.state_dict.pt", weights_only=True)
    assert any(k.endswith(".coefs") for k in state)


def test_compress_imagenet_network_on_an_image_folder(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "alexnet-penni.pt"
    argv = ["compress", "--arch", "alexnet", "--data", str(tmp_path / "imagenet"), "-o", str(out),
            "--baseline-epochs", "1", "--retrain-epochs", "1", "--finetune-epochs", "1", "--batch-size", "4",
            "--lr", "0.001", "--baseline-lr", "0.001"]
    assert main(argv) == 0
    assert capsys.readouterr().out.count("\n") == 6
    model = torch.jit.load(str(out))
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 2)  # two classes in the folder
    summary = json.loads((tmp_path / "alexnet-penni.summary.json").read_text())
    assert summary["stages"][-1]["macs"] < summary["stages"][0]["macs"]


def test_compress_refuses_a_folder_without_val(tmp_path, capsys):
    (tmp_path / "train" / "a").mkdir(parents=True)
    assert main(["compress", "--arch", "resnet50", "--data", str(tmp_path), "-o", str(tmp_path / "m.pt")]) != 0
    assert "val" in capsys.readouterr().err
