"""MAC and parameter counting: hand-computed small cases, PENNI layers, and the published counts of the zoo."""

import logging

import pytest
import torch
from torch import nn

from penni_deploy.errors import InputSpecError
from penni_deploy.method.counting import (
    LayerCount,
    ModelCount,
    coefficient_density,
    count_model,
    format_count,
)
from penni_deploy.models import PenniConv2d, build_model, randomize_penni_weights_


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Shared 2-core machine: one thread avoids barrier stalls (see tests/models/test_zoo.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_net():
    """Input 3×8×8. Each layer's MACs are worked out by hand in test_tiny_net_by_hand."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 0: 3×3, bias
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1, bias=False),  # 3: 1×1
        nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False),  # 4: stride 2 -> 4×4
        nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False),  # 5: grouped, 4 input channels per group
        nn.MaxPool2d(2),  # -> 2×2
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),  # 8: 128 -> 10
    )


def test_tiny_net_by_hand():
    count = count_model(_tiny_net(), (1, 3, 8, 8))
    expected = {
        "0": ("conv", (8, 8, 8), 8 * 8 * 8 * 3 * 9),  # Ho·Wo·Cout·Cin·k² = 13,824
        "3": ("conv", (16, 8, 8), 8 * 8 * 16 * 8),  # 1×1: 8,192 (not 1×1-blind)
        "4": ("conv", (16, 4, 4), 4 * 4 * 16 * 16 * 9),  # output pixels only: 36,864
        "5": ("conv", (32, 4, 4), 4 * 4 * 32 * (16 // 4) * 9),  # Cin/groups: 18,432
        "8": ("linear", (10,), 128 * 10),  # in·out MACs, not 2·in·out: 1,280
    }
    assert [layer.name for layer in count.layers] == list(expected)
    for layer in count.layers:
        kind, shape, macs = expected[layer.name]
        assert (layer.kind, layer.output_shape, layer.macs, layer.dense_macs) == (kind, shape, macs, macs)
    assert count.macs == 13_824 + 8_192 + 36_864 + 18_432 + 1_280 == 78_592
    assert count.macs_of("conv") == 77_312 and count.macs_of("linear") == 1_280
    # Parameters: conv 0 (216 + 8 bias), BN (8 + 8), 1×1 128, stride-2 2,304, grouped 32·4·9 = 1,152,
    # Linear 1,280 + 10; BatchNorm running statistics are buffers and not counted.
    params = 224 + 16 + 128 + 2_304 + 1_152 + 1_290
    assert count.params == count.effective_params == params == 5_114
    assert count.layers[0].params == 224 and count.coef_density is None and count.uncounted == ()


def test_counts_are_per_image():
    one = count_model(_tiny_net(), (1, 3, 8, 8))
    three = count_model(_tiny_net(), (3, 3, 8, 8))
    assert [layer.macs for layer in three.layers] == [layer.macs for layer in one.layers]
    assert three.layers[1].output_shape == (16, 8, 8)


def _penni_layer(stride, bias, nnz=7):
    torch.manual_seed(0)
    layer = PenniConv2d(4, 6, 3, stride=stride, padding=1, num_bases=5, bias=bias)
    with torch.no_grad():
        layer.coefs.zero_()
        layer.coefs.view(-1)[torch.arange(nnz) * 11] = 1.0  # nnz known non-zeros among the 24·5 = 120
    return layer


@pytest.mark.parametrize("form", ["two_stage", "dense"])
@pytest.mark.parametrize(("stride", "bias", "pixels"), [(1, False, 100), (2, True, 25)], ids=["s1", "s2-bias"])
def test_penni_conv_known_nnz(stride, bias, pixels, form):
    layer = _penni_layer(stride, bias)
    layer.form = form  # the count is of the two-stage form the compiler lowers, whatever form runs
    count = count_model(layer, (2, 4, 10, 10))
    (entry,) = count.layers
    assert entry.kind == "penni" and entry.output_shape == (6, 10 // stride, 10 // stride)
    assert entry.macs == pixels * (4 * 5 * 9 + 7)  # stage 1: Cin·d·k² = 180 per pixel; stage 2: nnz = 7
    assert entry.dense_macs == pixels * 6 * 4 * 9  # Cout·Cin·k² = 216 per pixel
    bias_params = 6 if bias else 0
    assert entry.params == count.params == 5 * 9 + 24 * 5 + bias_params  # basis 45 + coefs 120 (+ bias)
    assert entry.effective_params == count.effective_params == 5 * 9 + 7 + bias_params
    assert (count.coef_nnz, count.coef_total) == (7, 120)
    assert count.coef_density == coefficient_density(layer) == pytest.approx(7 / 120)


def test_dense_coefficient_ratio_matches_the_method_note():
    # With dense C a k×k PENNI layer costs d/Cout + d/k² of the dense conv (penni-method.md).
    model = build_model("resnet56")
    count = count_model(model, (1, 3, 32, 32))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, PenniConv2d)}
    assert len([entry for entry in count.layers if entry.kind == "penni"]) == len(layers) == 55
    for entry in count.layers:
        if entry.kind == "penni":
            m = layers[entry.name]
            ratio = m.num_bases / m.out_channels + m.num_bases / 9  # k = 3
            assert entry.macs / entry.dense_macs == pytest.approx(ratio), entry.name


def test_pruned_model_effective_params_and_density():
    model = randomize_penni_weights_(build_model("resnet20"), density=0.03, seed=0)
    count = count_model(model, (1, 3, 32, 32))
    nnz = sum(int(torch.count_nonzero(m.coefs)) for m in model.modules() if isinstance(m, PenniConv2d))
    total = sum(m.coefs.numel() for m in model.modules() if isinstance(m, PenniConv2d))
    assert count.coef_nnz == nnz and count.coef_total == total
    assert count.effective_params == count.params - (total - nnz)
    assert coefficient_density(model) == pytest.approx(0.03, abs=0.005)
    assert count.macs < count.dense_macs == 40_551_040  # the dense equivalent is ResNet20's own count
    assert coefficient_density(nn.Linear(2, 2)) is None


# --- published counts of the zoo's networks (dense, per image) ---------------------------------------------


def test_resnet18_cifar():
    count = count_model(build_model("resnet18", penni=False), (1, 3, 32, 32))
    # stem 1,769,472 + layer1 4·37,748,736 + per later stage (one strided 3×3 18,874,368, three 3×3
    # 37,748,736, a 1×1 shortcut 2,097,152) = 134,217,728, three times:
    assert count.macs_of("conv") == 1_769_472 + 4 * 37_748_736 + 3 * 134_217_728 == 555_417_600
    assert count.macs_of("linear") == 512 * 10
    # The commonly cited 556.65M is this plus 2 ops per BatchNorm output element (thop's convention):
    # 614,400 BN outputs (stem 65,536; layer1 4·65,536; layer2 5·32,768; layer3 5·16,384; layer4 5·8,192).
    assert count.macs == 555_422_720 and count.macs + 2 * 614_400 == 556_651_520


def test_resnet20_and_alexnet():
    r20 = count_model(build_model("resnet20", penni=False), (1, 3, 32, 32))
    # stem 442,368; stage 1 six 2,359,296; stages 2 and 3 one strided 1,179,648 + five 2,359,296 each; fc 640
    assert r20.macs == 442_368 + 6 * 2_359_296 + 2 * (1_179_648 + 5 * 2_359_296) + 640 == 40_551_040
    assert r20.params == 269_722
    alex = count_model(build_model("alexnet", penni=False), (1, 3, 224, 224))
    # convs: 55²·64·3·121 + 27²·192·64·25 + 13²·(384·192 + 256·384 + 256·256)·9; fc: 9216·4096 + 4096² + 4096·1000
    assert alex.macs_of("conv") == 70_276_800 + 223_948_800 + 361_340_928 == 655_566_528
    assert alex.macs_of("linear") == 37_748_736 + 16_777_216 + 4_096_000 == 58_621_952
    assert alex.params == 61_100_840


def test_resnet50_imagenet():
    count = count_model(build_model("resnet50", penni=False), (1, 3, 224, 224))
    # torchvision's ResNet50 is quoted at 4,089,184,256 MACs (convs + fc, as counted here); counters that also
    # count BatchNorm, ReLU, pooling or additions report a little more. Ours matches exactly.
    assert abs(count.macs - 4_089_184_256) <= 0.005 * 4_089_184_256
    assert count.macs == 4_089_184_256 and count.macs_of("linear") == 2048 * 1000
    assert count.params == 25_557_032


# --- format, model state, refusals --------------------------------------------------------------------------


def test_format_count():
    layer = LayerCount("conv1", "penni", (16, 32, 32), 3_210_000, 40_551_040, 270_000, 30_000)
    count = ModelCount((1, 3, 32, 32), (layer,), params=270_000, effective_params=30_000, coef_nnz=31,
                       coef_total=1_000)
    assert format_count(count) == "params 0.27M (effective 0.03M), MACs 3.21M (dense 40.6M), coef density 3.1%"
    dense = count_model(build_model("resnet18", penni=False), (1, 3, 32, 32))
    assert format_count(dense) == "params 11.2M, MACs 555M, no PENNI layers"


def test_training_mode_and_statistics_are_left_alone():
    model = _tiny_net().train()
    model[1].eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_model(model, (1, 3, 8, 8))
    assert model.training and model[0].training and not model[1].training
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not model[0]._forward_hooks  # hooks removed


def test_shared_layer_is_counted_per_call():
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    count = count_model(nn.Sequential(conv, nn.ReLU(), conv), (1, 4, 5, 5))
    assert [layer.name for layer in count.layers] == ["0", "0"]
    assert count.macs == 2 * 25 * 4 * 4 * 9 and count.params == 144


def test_unknown_layer_types_are_reported(caplog):
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 6, 3))
    with caplog.at_level(logging.WARNING, logger="penni_deploy.method.counting"):
        count = count_model(model, (1, 2, 8))
    assert count.uncounted == ("0",) and "not counted" in caplog.text
    assert count.macs == 24 * 3 and count.params == 2 * 4 * 3 + 4 + 24 * 3 + 3
    assert format_count(count).endswith("MACs of 1 module(s) not counted")


@pytest.mark.parametrize("shape", [(3,), (0, 3, 8, 8), (1, 4, 8, 8)], ids=["unbatched", "empty", "wrong-channels"])
def test_bad_input_shape(shape):
    with pytest.raises(InputSpecError):
        count_model(_tiny_net(), shape)
