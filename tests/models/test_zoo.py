"""The CIFAR networks: build, run, export, trace, state_dict fitting (incl. shrunk checkpoints), random weights."""

import pytest
import torch
from torch import nn

from penni_deploy.errors import ModelLoadError
from penni_deploy.models import (
    ARCHITECTURES,
    INPUT_SHAPES,
    VGG16,
    OptionAShortcut,
    PenniConv2d,
    ResNet18,
    ResNet56,
    build_model,
    randomize_penni_weights_,
)

# ImageNet nets are tested in test_imagenet_models.py
ARCHS = sorted(a for a in ARCHITECTURES if INPUT_SHAPES[a] == (1, 3, 32, 32))
# (architecture, number of k×k convs)
KXK_CONVS = {"resnet18": 17, "resnet20": 19, "resnet56": 55, "vgg16": 13}
DENSE_PARAMS = {"resnet18": 11_173_962, "resnet20": 269_722, "resnet56": 853_018, "vgg16": 15_251_402}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tests are overhead-bound; two threads on a shared 2-core machine stall at barriers (seen: 60 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _input(batch=2, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _conv_nodes(graph):
    return [n for n in graph.nodes if n.op == "call_function" and "conv2d" in str(n.target)]


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.parametrize("penni", [True, False], ids=["penni", "dense"])
@pytest.mark.parametrize("arch", ARCHS)
def test_build_run_export_trace(arch, penni):
    torch.manual_seed(0)
    model = build_model(arch, penni=penni)
    n_penni = sum(isinstance(m, PenniConv2d) for m in model.modules())
    assert n_penni == (KXK_CONVS[arch] if penni else 0)
    if not penni:
        assert sum(p.numel() for p in model.parameters()) == DENSE_PARAMS[arch]
    x = _input(batch=1)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 10) and torch.isfinite(y).all()

    exported = torch.export.export(model, (x,))
    n_1x1 = sum(isinstance(m, nn.Conv2d) for m in model.modules())  # ResNet18's dense shortcuts
    # The two-stage form shows up as two convs per PENNI layer.
    assert len(_conv_nodes(exported.graph)) == 2 * n_penni + n_1x1
    traced = torch.jit.trace(model, x)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(traced(x), y, atol=1e-5, rtol=1e-5)


def test_state_dict_keys_follow_reference_layout():
    vgg = build_model("vgg16").state_dict()
    assert vgg["features.0.basis"].shape == (5, 9) and vgg["features.0.coefs"].shape == (64 * 3, 5)
    assert vgg["features.40.coefs"].shape == (512 * 512, 5) and "features.41.running_var" in vgg
    assert vgg["classifer.0.weight"].shape == (512, 512) and vgg["classifer.4.running_mean"].shape == (512,)
    r56 = build_model("resnet56").state_dict()
    assert r56["layer3.0.conv1.coefs"].shape == (2048, 5) and r56["linear.weight"].shape == (10, 64)
    assert not any("shortcut" in k for k in r56)
    r18 = build_model("resnet18").state_dict()
    assert r18["layer2.0.shortcut.0.weight"].shape == (128, 64, 1, 1)
    assert "layer2.0.shortcut.1.running_var" in r18 and "layer1.0.shortcut.0.weight" not in r18


def test_option_a_shortcut():
    x = torch.randn(2, 16, 8, 8)
    y = OptionAShortcut(8)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


@pytest.mark.parametrize("penni", [True, False], ids=["penni", "dense"])
@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_round_trip(arch, penni):
    model = randomize_penni_weights_(build_model(arch, penni=penni), density=0.2, seed=3)
    rebuilt = build_model(arch, model.state_dict(), penni=penni)
    loaded = rebuilt.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_data_parallel_prefix_is_dropped():
    sd = {f"module.{k}": v for k, v in build_model("resnet56").state_dict().items()}
    assert isinstance(build_model("resnet56", sd), ResNet56)


# --- shrunk checkpoints ----------------------------------------------------------------------------------


def _shrink_coefs(coefs, cout, cin, keep_out, keep_in, keep_bases):
    # (Cout*Cin, d) -> (Cout, Cin, d) -> kept rows, columns, bases -> (Cout'*Cin', d')
    c = coefs.view(cout, cin, -1)[keep_out][:, keep_in][:, :, keep_bases]
    return c.reshape(len(keep_out) * len(keep_in), len(keep_bases)).clone()


def _shrink_bn(sd, prefix, keep):
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{prefix}.{name}"] = sd[f"{prefix}.{name}"][keep].clone()


def test_shrunk_vgg16_rebuilds_with_its_widths():
    """Slice a full checkpoint as the reference's shrink does: permuted kept channels, fewer bases."""
    full = randomize_penni_weights_(build_model("vgg16"), density=0.5, seed=0).state_dict()
    sd = dict(full)
    gen = torch.Generator().manual_seed(0)
    conv_idx = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
    default = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    new_widths = [13, 64, 50, 128, 7, 256, 100, 512, 33, 512, 512, 20, 9]
    new_bases = {0: 3, 10: 2, 40: 3}
    keep_in = torch.arange(3)
    for idx, cout, w in zip(conv_idx, default, new_widths):
        keep_out = torch.randperm(cout, generator=gen)[:w]  # not in ascending order
        bases = torch.arange(new_bases.get(idx, 5))
        sd[f"features.{idx}.basis"] = full[f"features.{idx}.basis"][bases].clone()
        sd[f"features.{idx}.coefs"] = _shrink_coefs(
            full[f"features.{idx}.coefs"], cout, len(full[f"features.{idx}.coefs"]) // cout, keep_out, keep_in, bases
        )
        _shrink_bn(sd, f"features.{idx + 1}", keep_out)
        keep_in = keep_out
    sd["classifer.0.weight"] = full["classifer.0.weight"][:, keep_in].clone()

    model = build_model("vgg16", sd)
    convs = [model.features[i] for i in conv_idx]
    assert [c.out_channels for c in convs] == new_widths
    assert [c.in_channels for c in convs] == [3] + new_widths[:-1]
    assert {i: c.num_bases for i, c in zip(conv_idx, convs) if c.num_bases != 5} == new_bases
    assert model.classifer[0].in_features == 9
    loaded = model.state_dict()
    for key, value in sd.items():
        assert torch.equal(loaded[key], value), key
    with torch.no_grad():
        assert torch.isfinite(model(_input())).all()


def test_shrunk_resnet56_inner_widths_and_bases():
    full = randomize_penni_weights_(build_model("resnet56"), density=0.5, seed=1).state_dict()
    sd = dict(full)
    shrink = {"layer1.0": (16, 5, 3), "layer2.4": (32, 11, 5), "layer3.0": (64, 1, 2), "layer3.8": (64, 40, 5)}
    for block, (planes, width, d) in shrink.items():
        cin1 = full[f"{block}.conv1.coefs"].shape[0] // planes
        keep = torch.arange(width).flip(0)
        bases = torch.arange(d)
        sd[f"{block}.conv1.basis"] = full[f"{block}.conv1.basis"][bases].clone()
        sd[f"{block}.conv1.coefs"] = _shrink_coefs(
            full[f"{block}.conv1.coefs"], planes, cin1, keep, torch.arange(cin1), bases
        )
        _shrink_bn(sd, f"{block}.bn1", keep)
        sd[f"{block}.conv2.coefs"] = _shrink_coefs(
            full[f"{block}.conv2.coefs"], planes, planes, torch.arange(planes), keep, torch.arange(5)
        )
    model = build_model("resnet56", sd)
    for block, (planes, width, d) in shrink.items():
        blk = model.get_submodule(block)
        assert (blk.conv1.out_channels, blk.conv1.num_bases, blk.conv2.in_channels) == (width, d, width)
        assert blk.conv2.out_channels == planes
    assert model.get_submodule("layer2.5").conv1.out_channels == 32
    with torch.no_grad():
        y = model(_input())
    assert torch.isfinite(y).all()


def test_shrunk_resnet18_stream_and_inner_widths():
    widths = {
        "conv1": 48,
        "layer1.0.conv1": 20,
        "layer1.0.conv2": 48,
        "layer1.1.conv1": 31,
        "layer1.1.conv2": 48,
        "layer2.0.conv2": 100,
        "layer2.1.conv2": 100,
        "layer3.0.conv1": 7,
        "layer4.1.conv1": 3,
    }
    bases = {"conv1": 3, "layer2.1.conv1": 2, "layer4.0.conv2": 1}
    biased = {"layer1.0.conv1", "layer3.0.shortcut.0"}
    source = randomize_penni_weights_(ResNet18(widths, bases, biased=biased), density=0.3, seed=2)
    model = build_model("resnet18", source.state_dict())
    for path, width in widths.items():
        assert model.get_submodule(path).out_channels == width, path
    for path, d in bases.items():
        assert model.get_submodule(path).num_bases == d, path
    assert model.get_submodule("layer2.0.shortcut.0").in_channels == 48
    assert model.get_submodule("layer3.0.conv1").in_channels == 100
    convs = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, PenniConv2d))}
    assert {n for n, m in convs.items() if m.bias is not None} == biased
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))


# --- checkpoints that do not fit -------------------------------------------------------------------------


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ModelLoadError, match="alexnet, resnet18, resnet20, resnet50, resnet56, vgg16"):
        build_model("googlenet")


def test_coefs_rows_mismatch_names_key_and_shapes():
    sd = dict(build_model("vgg16").state_dict())
    sd["features.3.coefs"] = torch.zeros(64 * 60, 5)
    with pytest.raises(ModelLoadError, match=r"'features\.3\.coefs'.*\(3840, 5\).*\(4096, 5\)"):
        build_model("vgg16", sd)


def test_missing_key_is_named():
    sd = dict(build_model("resnet56").state_dict())
    del sd["layer2.3.bn1.weight"]
    with pytest.raises(ModelLoadError, match=r"layer2\.3\.bn1\.weight"):
        build_model("resnet56", sd)


def test_resnet56_inconsistent_residual_width_is_refused():
    sd = dict(build_model("resnet56").state_dict())
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"layer1.4.bn2.{name}"] = sd[f"layer1.4.bn2.{name}"][:12]
    with pytest.raises(ModelLoadError, match=r"'layer1\.4\.bn2\.weight'.*\(12,\).*\(16,\)"):
        build_model("resnet56", sd)


def test_dense_checkpoint_into_penni_model_says_what_to_do():
    sd = build_model("resnet56", penni=False).state_dict()
    with pytest.raises(ModelLoadError, match="penni=False"):
        build_model("resnet56", sd)


# --- random weights --------------------------------------------------------------------------------------


def _density(model):
    coefs = [m.coefs for m in model.modules() if isinstance(m, PenniConv2d)]
    return sum(int(torch.count_nonzero(c)) for c in coefs) / sum(c.numel() for c in coefs)


@pytest.mark.parametrize("density", [0.0, 0.03, 1.0])
def test_random_weights_density_and_scale(density):
    model = randomize_penni_weights_(ResNet56(), density=density, seed=7)
    assert _density(model) == pytest.approx(density, abs=0.003)
    assert not model.training
    bn = model.get_submodule("layer2.3.bn1")
    assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert bn.running_mean.abs().sum() > 0 or density == 0.0
    with torch.no_grad():
        y = model(_input(batch=4, seed=1))
        feat = model.layer3(model.layer2(model.layer1(torch.relu(model.bn1(model.conv1(_input(4, 1)))))))
    assert torch.isfinite(y).all() and y.abs().max() < 100
    assert feat.pow(2).mean().sqrt() < 20  # the residual stream stays O(1) through 27 blocks


def test_random_weights_are_deterministic():
    a = randomize_penni_weights_(VGG16(widths=[8] * 13, hidden=(16, 16)), density=0.1, seed=5).state_dict()
    b = randomize_penni_weights_(VGG16(widths=[8] * 13, hidden=(16, 16)), density=0.1, seed=5).state_dict()
    c = randomize_penni_weights_(VGG16(widths=[8] * 13, hidden=(16, 16)), density=0.1, seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.coefs"], c["features.0.coefs"])
