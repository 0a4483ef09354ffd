"""AlexNet and ResNet50 (torchvision layouts) and ResNet20: build, run, export, key names, state_dict fitting."""

import pytest
import torch
from torch import nn

from penni_deploy.errors import ModelLoadError
from penni_deploy.models import (
    ARCHITECTURES,
    INPUT_SHAPES,
    AlexNet,
    PenniConv2d,
    ResNet20,
    ResNet50,
    build_model,
    randomize_penni_weights_,
)
from penni_deploy.models.resnet_cifar import (
    RESNET56_STAGES,
    OptionAResNet,
    option_a_stages,
)

# Dense parameter counts. AlexNet and ResNet50 are torchvision's published totals. ResNet20 with option-A
# (parameter-free) shortcuts has 269,722; the often quoted 272,474 is the option-B variant, whose two 1×1
# projection shortcuts add 16·32 + 32·64 = 2,560 weights and 2·(32 + 64) = 192 BatchNorm parameters.
DENSE_PARAMS = {"alexnet": 61_100_840, "resnet50": 25_557_032, "resnet20": 269_722}
# k×k convs with k > 1: AlexNet all 5; ResNet50 the 7×7 stem and 16 bottleneck 3×3s; ResNet20 1 + 2·9.
KXK_CONVS = {"alexnet": 5, "resnet50": 17, "resnet20": 19}
# Dense convs left when penni: ResNet50's 16 + 16 bottleneck 1×1s and 4 downsample 1×1s.
ONE_BY_ONE_CONVS = {"alexnet": 0, "resnet50": 36, "resnet20": 0}
NUM_CLASSES = {"alexnet": 1000, "resnet50": 1000, "resnet20": 10}
# Small inputs keep the tests fast; ResNet50 and AlexNet pool adaptively, so any size from 64 on runs.
SMALL_INPUT = {"alexnet": (1, 3, 64, 64), "resnet50": (1, 3, 64, 64), "resnet20": (1, 3, 32, 32)}

ALEXNET_KEYS = [
    f"{layer}.{name}"
    for layer in ("features.0", "features.3", "features.6", "features.8", "features.10",
                  "classifier.1", "classifier.4", "classifier.6")
    for name in ("weight", "bias")
]  # torchvision's alexnet().state_dict(), in order


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Overhead-bound tests on a shared 2-core machine: two threads stall at barriers (see test_zoo.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _input(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _conv_nodes(graph):
    return [n for n in graph.nodes if n.op == "call_function" and "conv2d" in str(n.target)]


def test_registered_with_input_shapes():
    for arch in ("alexnet", "resnet50", "resnet20"):
        assert arch in ARCHITECTURES
    assert set(INPUT_SHAPES) == set(ARCHITECTURES)
    assert INPUT_SHAPES["alexnet"] == INPUT_SHAPES["resnet50"] == (1, 3, 224, 224)
    assert INPUT_SHAPES["resnet20"] == (1, 3, 32, 32)


@pytest.mark.parametrize("arch", sorted(DENSE_PARAMS))
def test_dense_parameter_count(arch):
    model = build_model(arch, penni=False)
    assert sum(p.numel() for p in model.parameters()) == DENSE_PARAMS[arch]
    assert not any(isinstance(m, PenniConv2d) for m in model.modules())


@pytest.mark.parametrize("arch", sorted(KXK_CONVS))
def test_penni_build_run_export(arch):
    torch.manual_seed(0)
    model = build_model(arch, penni=True)
    penni = [m for m in model.modules() if isinstance(m, PenniConv2d)]
    dense = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(penni) == KXK_CONVS[arch] and len(dense) == ONE_BY_ONE_CONVS[arch]
    assert all(m.kernel_size == (1, 1) for m in dense)
    x = _input(SMALL_INPUT[arch])
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, NUM_CLASSES[arch]) and torch.isfinite(y).all()
    exported = torch.export.export(model, (x,))
    # The two-stage form shows up as two convs per PENNI layer.
    assert len(_conv_nodes(exported.graph)) == 2 * len(penni) + len(dense)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), y, atol=1e-5, rtol=1e-5)


def test_alexnet_at_224_and_num_classes():
    torch.manual_seed(0)
    model = AlexNet(num_classes=10).eval()
    with torch.no_grad():
        feats = model.features(_input((1, 3, 224, 224)))
        y = model(_input((1, 3, 224, 224)))
    assert feats.shape == (1, 256, 6, 6)  # torchvision's 9216 classifier inputs with no pooling needed
    assert y.shape == (1, 10) and torch.isfinite(y).all()


def test_alexnet_keys_are_torchvisions():
    dense = build_model("alexnet", penni=False).state_dict()
    assert list(dense) == ALEXNET_KEYS
    assert dense["features.0.weight"].shape == (64, 3, 11, 11)
    assert dense["classifier.1.weight"].shape == (4096, 9216)
    penni = build_model("alexnet").state_dict()
    assert penni["features.0.basis"].shape == (5, 121) and penni["features.0.coefs"].shape == (64 * 3, 5)
    assert penni["features.0.bias"].shape == (64,)  # the dense conv's bias is kept
    assert penni["features.3.basis"].shape == (5, 25) and penni["features.10.coefs"].shape == (256 * 256, 5)
    assert penni["classifier.6.weight"].shape == (1000, 4096)
    assert not any(k.endswith(".weight") and k.startswith("features.") for k in penni)


def test_resnet50_keys_are_torchvisions():
    model = build_model("resnet50", penni=False)
    sd = model.state_dict()
    # 53 convs + 53 BNs (2 params, 3 buffers each) + fc: 53 + 5·53 + 2 = 320 entries, as torchvision's.
    assert len(sd) == 320
    assert sd["conv1.weight"].shape == (64, 3, 7, 7) and sd["bn1.running_var"].shape == (64,)
    assert sd["layer1.0.conv1.weight"].shape == (64, 64, 1, 1)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer1.0.downsample.1.running_mean"].shape == (256,)
    assert sd["layer3.5.conv3.weight"].shape == (1024, 256, 1, 1) and "layer3.6.conv1.weight" not in sd
    assert sd["layer4.2.bn3.weight"].shape == (2048,) and sd["fc.weight"].shape == (1000, 2048)
    assert "layer1.1.downsample.0.weight" not in sd and "conv1.bias" not in sd
    # v1.5: the stride of a downsampling block is on its 3×3 conv, not its first 1×1.
    assert model.layer2[0].conv1.stride == (1, 1) and model.layer2[0].conv2.stride == (2, 2)
    assert model.layer2[0].downsample[0].stride == (2, 2)
    penni = build_model("resnet50").state_dict()
    assert penni["conv1.basis"].shape == (5, 49) and penni["conv1.coefs"].shape == (64 * 3, 5)
    assert penni["layer1.0.conv2.coefs"].shape == (64 * 64, 5) and "layer1.0.conv1.weight" in penni


def test_resnet20_layout():
    model = build_model("resnet20")
    assert type(model) is ResNet20 and len(model.layer2) == 3
    sd = model.state_dict()
    assert "layer1.2.conv2.coefs" in sd and "layer1.3.conv1.coefs" not in sd
    assert sd["layer3.0.conv1.coefs"].shape == (64 * 32, 5) and sd["linear.weight"].shape == (10, 64)
    assert not any("shortcut" in k for k in sd)
    assert option_a_stages(56) == RESNET56_STAGES
    with pytest.raises(ValueError, match="6n"):
        option_a_stages(21)
    with pytest.raises(TypeError, match="abstract"):
        OptionAResNet()


@pytest.mark.parametrize("penni", [True, False], ids=["penni", "dense"])
@pytest.mark.parametrize("arch", ["resnet50", "resnet20"])
def test_state_dict_round_trip(arch, penni):
    shape = (2, *SMALL_INPUT[arch][1:])
    model = randomize_penni_weights_(build_model(arch, penni=penni), density=0.2, seed=3, input_shape=shape)
    rebuilt = build_model(arch, model.state_dict(), penni=penni)
    assert type(rebuilt) is type(model)
    loaded = rebuilt.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    x = _input(shape)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_shrunk_alexnet_rebuilds_with_its_widths():
    # Small widths keep it fast; the shape-reading logic is the same as at full size.
    source = randomize_penni_weights_(
        AlexNet(widths=[10, 20, 30, 40, 50], num_bases={"features.3": 2}, hidden=(64, 32), num_classes=7),
        density=0.5, seed=1, input_shape=(2, 3, 64, 64),
    )
    model = build_model("alexnet", source.state_dict())
    assert [model.features[i].out_channels for i in (0, 3, 6, 8, 10)] == [10, 20, 30, 40, 50]
    assert model.features[3].num_bases == 2 and model.features[0].num_bases == 5
    assert model.classifier[1].in_features == 50 * 36 and model.classifier[6].out_features == 7
    x = _input((1, 3, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))


def test_shrunk_resnet50_rebuilds_with_its_widths():
    widths = {"conv1": 32, "layer1.0.conv1": 20, "layer1.0.conv2": 17, "layer2.1.conv2": 9}
    widths.update({f"layer3.{b}.conv3": 600 for b in range(6)})  # the residual stream of stage 3
    bases = {"conv1": 3, "layer4.2.conv2": 1}
    source = randomize_penni_weights_(ResNet50(widths, bases, num_classes=10), density=0.3, seed=2,
                                      input_shape=(2, 3, 32, 32))
    model = build_model("resnet50", source.state_dict())
    for path, width in widths.items():
        assert model.get_submodule(path).out_channels == width, path
    for path, d in bases.items():
        assert model.get_submodule(path).num_bases == d, path
    assert model.layer1[0].downsample[0].in_channels == 32 and model.layer4[0].conv1.in_channels == 600
    x = _input((1, 3, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))


def test_resnet50_inconsistent_residual_width_is_refused():
    sd = dict(ResNet50(num_classes=10).state_dict())
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"layer2.2.bn3.{name}"] = sd[f"layer2.2.bn3.{name}"][:500]
    with pytest.raises(ModelLoadError, match=r"'layer2\.2\.bn3\.weight'.*\(500,\).*\(512,\)"):
        build_model("resnet50", sd)


def test_dense_alexnet_checkpoint_into_penni_model_says_what_to_do():
    sd = AlexNet(widths=[4, 4, 4, 4, 4], hidden=(8, 8), penni=False).state_dict()
    with pytest.raises(ModelLoadError, match="penni=False"):
        build_model("alexnet", sd)
    assert isinstance(build_model("alexnet", sd, penni=False).features[0], nn.Conv2d)
