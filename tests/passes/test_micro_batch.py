"""Micro-batching: the choice (``plan.micro_batch``), and a build that runs a batch as micro-batches
computing exactly what the whole-batch build does, with its weights stored once and every kernel
call attributed to its layer."""

import numpy as np
import pytest
import torch
from tiny_models import save_pt2, tiny_model

import penni_deploy
from penni_deploy.cli import main
from penni_deploy.compiler import CompileOptions
from penni_deploy.errors import PenniError
from penni_deploy.plan.micro_batch import choose_micro_batch, layer_footprint_bytes
from penni_deploy.targets.x86 import X86Target

MB = 1 << 20


def test_choice_keeps_small_batches_whole_and_splits_large_ones():
    assert choose_micro_batch(8, 1 * MB, 32 * MB) == 8  # CIFAR-sized maps: all at once
    assert choose_micro_batch(8, 7 * MB, 32 * MB) == 2  # ResNet50's 56×56 stage: 2 × 7 MB fit 16 MB
    assert choose_micro_batch(6, 7 * MB, 32 * MB) == 2  # a divisor of the batch
    assert choose_micro_batch(7, 7 * MB, 32 * MB) == 1  # prime: one image at a time
    assert choose_micro_batch(8, 40 * MB, 32 * MB) == 1  # even one image does not fit
    assert choose_micro_batch(8, 7 * MB, None) == 8  # unknown cache (a GPU): never split
    assert choose_micro_batch(1, 7 * MB, 1 * MB) == 1


def test_footprint_counts_input_output_and_residual_per_image():
    layers = [{"input": [4, 64, 56, 56], "output": [4, 256, 56, 56], "epilogue": "+bias+res+relu"},
              {"input": [4, 256, 56, 56], "output": [4, 64, 56, 56], "epilogue": "+bias+relu"}]
    per_image = 4 * (64 * 56 * 56 + 2 * 256 * 56 * 56)
    assert layer_footprint_bytes(layers) == per_image


@pytest.fixture(scope="module")
def tiny_batch6(tmp_path_factory):
    folder = tmp_path_factory.mktemp("micro")
    model = tiny_model()
    path = save_pt2(model, folder / "tiny6.pt2", shape=(6, 3, 12, 12))
    whole = folder / "whole.penni"
    penni_deploy.compile_model(str(path), str(whole))
    return model, path, whole


@pytest.mark.parametrize("images", [1, 2, 3])
def test_micro_batched_build_equals_the_whole_batch(images, tiny_batch6, tmp_path):
    model, path, whole = tiny_batch6
    out = tmp_path / f"micro{images}.penni"
    manifest = penni_deploy.compile_model(str(path), str(out), options=CompileOptions(micro_batch=images))
    assert manifest.micro_batch == images
    assert manifest.inputs[0].shape == [6, 3, 12, 12] and manifest.outputs[0].shape == [6, 5]
    x = np.random.default_rng(images).standard_normal((6, 3, 12, 12)).astype(np.float32)
    # the same per-image arithmetic up to the order of float sums (kernels picked per micro-batch shape)
    got, expected = penni_deploy.load(out)(x), penni_deploy.load(whole)(x)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    with torch.no_grad():
        np.testing.assert_allclose(penni_deploy.load(out)(x), model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    # every layer kernel is called once per micro-batch, each call attributed to its layer
    layer_calls = [k["layer"] for k in manifest.kernels if k["layer"] is not None]
    per_pass = len(layer_calls) // (6 // images)
    assert per_pass > 0 and layer_calls == layer_calls[:per_pass] * (6 // images)


def test_weights_are_not_copied_per_micro_batch(tmp_path):
    # 2 MB of dense weights: copied per micro-batch they would show in the library size.
    net = torch.nn.Sequential(torch.nn.Conv2d(64, 256, 1), torch.nn.ReLU(), torch.nn.Conv2d(256, 2048, 1)).eval()
    path = tmp_path / "wide.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(4, 64, 8, 8),)), str(path))
    whole = penni_deploy.compile_model(str(path), str(tmp_path / "whole.penni"))
    micro = penni_deploy.compile_model(str(path), str(tmp_path / "micro.penni"), options=CompileOptions(micro_batch=1))
    weights = 4 * (64 * 256 + 256 * 2048)
    assert micro.micro_batch == 1 and whole.micro_batch is None
    assert micro.library["bytes"] - whole.library["bytes"] < weights / 4


def test_the_automatic_choice_splits_when_the_cache_is_small(tiny_batch6, tmp_path, monkeypatch):
    model, path, _ = tiny_batch6
    footprint = 4 * (8 * 12 * 12 + 2 * 16 * 6 * 6 + 8 * 12 * 12)  # about 10 KB per image, at most
    monkeypatch.setattr(X86Target, "micro_batch_cache_bytes", lambda self: 6 * footprint)  # 3 images fit half
    manifest = penni_deploy.compile_model(str(path), str(tmp_path / "auto.penni"))
    assert manifest.micro_batch in (1, 2, 3)
    x = np.random.default_rng(0).standard_normal((6, 3, 12, 12)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(penni_deploy.load(tmp_path / "auto.penni")(x), model(torch.from_numpy(x)).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_micro_batch_must_divide_the_batch(tiny_batch6, tmp_path, capsys):
    _, path, _ = tiny_batch6
    out = tmp_path / "x.penni"
    assert main(["compile", str(path), "-o", str(out), "--micro-batch", "4", "--quiet"]) != 0
    assert "--micro-batch 4 must divide the batch size 6" in capsys.readouterr().err and not out.exists()


def test_a_graph_that_fixed_its_batch_runs_whole_when_not_asked(tmp_path, monkeypatch):
    class FixedBatch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(x).view(4, -1).sum(1)  # the batch of 4 is baked into the graph

    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(FixedBatch().eval(), (torch.zeros(4, 3, 8, 8),)), str(path))
    # a cache so small that the automatic choice wants one image at a time, and cannot trace it
    monkeypatch.setattr(X86Target, "micro_batch_cache_bytes", lambda self: 1024)
    manifest = penni_deploy.compile_model(str(path), str(tmp_path / "a.penni"))
    assert manifest.micro_batch is None  # not asked by hand: the whole batch at once, no error
    with pytest.raises(PenniError, match="cannot trace the model for --micro-batch 2"):
        penni_deploy.compile_model(str(path), str(tmp_path / "b.penni"), options=CompileOptions(micro_batch=2))
