"""Every accepted model format compiles to the same network, and PENNI layers are found in both
forms they take: two-stage, and dense convs of rank <= d (how reference-trained models trace)."""

import json

import numpy as np
import pytest
import torch
from model_helpers import random_penni_model, relative_error

import penni_deploy
from penni_deploy.errors import InputSpecError, ModelLoadError
from penni_deploy.frontend.load_model import INPUT_SHAPE_EXTRA, detect_format
from penni_deploy.models import PenniConv2d

SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def model():
    return random_penni_model("resnet18", 0.03, seed=3)


def _reference_style(model):
    """The same network computing W = C·B and a plain conv2d, as the reference code does."""
    import copy

    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, PenniConv2d):
            m.form = "dense"
    return ref


def save_state_dict(model, path):
    torch.save(model.state_dict(), path)
    return {"arch": "resnet18"}


def save_torchscript(model, path):
    torch.jit.save(torch.jit.trace(model, torch.zeros(SHAPE)), path, _extra_files={INPUT_SHAPE_EXTRA: json.dumps(SHAPE)})
    return {}


def save_torchscript_reference_style(model, path):
    torch.jit.save(torch.jit.trace(_reference_style(model), torch.zeros(SHAPE)), path)
    return {"input_shape": SHAPE}  # nothing recorded in the file


def save_pt2(model, path):
    torch.export.save(torch.export.export(model, (torch.zeros(SHAPE),)), path)
    return {}


def save_pickle(model, path):
    torch.save(model, path)
    return {"trust_pickle": True}


SAVERS = {
    "state_dict": save_state_dict,
    "torchscript": save_torchscript,
    "torchscript-reference-style": save_torchscript_reference_style,
    "pt2": save_pt2,
    "pickle": save_pickle,
}


@pytest.fixture(scope="module")
def two_stage_layers(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("baseline") / "m.pt"
    save_state_dict(model, path)
    return penni_deploy.compile_model(str(path), str(path.with_suffix(".penni")), arch="resnet18").layers


@pytest.mark.parametrize("saver", SAVERS.values(), ids=SAVERS.keys())
def test_every_format_compiles_to_the_same_network(saver, model, two_stage_layers, tmp_path):
    path = tmp_path / "model.bin"
    kwargs = saver(model, path)
    artifact = tmp_path / "model.penni"
    manifest = penni_deploy.compile_model(str(path), str(artifact), **kwargs)

    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert relative_error(penni_deploy.load(artifact)(x), expected) <= 1e-4
    # Compiles "just as well": same PENNI layers, same sparsity, same MACs as the two-stage form.
    assert [(l["kind"], l["macs_compiled"]) for l in manifest.layers] == \
        [(l["kind"], l["macs_compiled"]) for l in two_stage_layers]


def test_format_detection(model, tmp_path):
    for name, saver in SAVERS.items():
        path = tmp_path / name
        saver(model, path)
    assert detect_format(str(tmp_path / "torchscript")) == "torchscript"
    assert detect_format(str(tmp_path / "pt2")) == "pt2"
    assert detect_format(str(tmp_path / "state_dict")) == "torch_save"


def test_pickle_refused_without_trust(model, tmp_path):
    path = tmp_path / "model.pkl"
    torch.save(model, path)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        penni_deploy.compile_model(str(path), str(tmp_path / "out.penni"))
    assert not (tmp_path / "out.penni").exists()


def test_state_dict_needs_arch(model, tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError, match="--arch"):
        penni_deploy.compile_model(str(path), str(tmp_path / "out.penni"))


def test_missing_input_shape_is_explained(model, tmp_path):
    path = tmp_path / "ref.ts"
    save_torchscript_reference_style(model, path)
    with pytest.raises(InputSpecError, match="--input-shape"):
        penni_deploy.compile_model(str(path), str(tmp_path / "out.penni"))
