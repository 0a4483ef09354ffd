"""layer_report: per-layer MACs and density of a fused module, checked against hand counts."""

import numpy as np
import pytest
import torch
from torch import nn

from penni_deploy.passes import graph_passes, run_passes
from penni_deploy.passes.layer_report import describe_conv_layers, format_layer_table

CIN = COUT = 8
D = 5


def _fused(module, torch_to_relax, shape=(1, 8, 8, 8)):
    mod, _ = run_passes(torch_to_relax(module, shape), graph_passes("penni"))
    return mod


def _penni_hand_count(layer, out_hw):
    """(nnz, maps some coefficient reads, MACs dense, MACs compiled) counted from the torch layer."""
    coefs = layer.coefs.detach().numpy().reshape(COUT, CIN * D)  # (Cout, Cin·d), column i·d + r
    nnz = int(np.count_nonzero(coefs))
    maps = int(np.count_nonzero(np.any(coefs != 0, axis=0)))
    pixels = out_hw[0] * out_hw[1]
    return nnz, maps, pixels * COUT * CIN * 9, pixels * (maps * 9 + nnz)


@pytest.mark.parametrize("stride", [1, 2], ids=["stride1", "stride2"])
@pytest.mark.parametrize("density", [0.1, 0.3], ids=["10pct", "30pct"])
def test_penni_layer_counts(density, stride, nets, torch_to_relax):
    layer = nets.penni_layer(density=density, seed=5, stride=stride, bias=True)
    ho = wo = 8 // stride
    nnz, maps, macs_dense, macs_compiled = _penni_hand_count(layer, (ho, wo))
    assert 0 < maps < CIN * D  # some maps unused, so the count is not trivially Cin·d

    (entry,) = describe_conv_layers(_fused(nn.Sequential(layer, nn.ReLU()), torch_to_relax))

    assert entry["kind"] == "penni" and entry["bases"] == D
    assert entry["input"] == [1, CIN, 8, 8] and entry["output"] == [1, COUT, ho, wo]
    assert entry["kernel"] == [3, 3] and entry["stride"] == [stride, stride]
    assert entry["epilogue"] == "+bias+relu"
    assert entry["maps_total"] == CIN * D and entry["maps_computed"] == maps
    assert entry["coef_density"] == pytest.approx(nnz / (COUT * CIN * D))
    assert entry["macs_dense"] == macs_dense
    assert entry["macs_compiled"] == macs_compiled


def test_factored_layer_counts_the_recovered_coefficients(nets, torch_to_relax):
    penni = nets.penni_layer(32, 32, density=0.1, seed=0)
    coefs = penni.coefs.detach().numpy()

    (entry,) = describe_conv_layers(_fused(nets.frozen_dense_conv(penni), torch_to_relax, (1, 32, 8, 8)))

    assert entry["kind"] == "penni" and entry["bases"] == D
    assert entry["coef_density"] == pytest.approx(np.count_nonzero(coefs) / coefs.size)


def test_dense_layer_counts(nets, torch_to_relax):
    conv = nets.dense_conv(cout=16, seed=1, kernel=5, stride=2, padding=2)

    (entry,) = describe_conv_layers(_fused(conv, torch_to_relax))

    assert entry["kind"] == "dense" and entry["bases"] is None and entry["coef_density"] == 1.0
    assert entry["output"] == [1, 16, 4, 4] and entry["epilogue"] == ""
    assert entry["macs_dense"] == entry["macs_compiled"] == 4 * 4 * 16 * 8 * 5 * 5


def test_all_zero_layer_costs_nothing(nets, torch_to_relax):
    layer = nets.penni_layer(density=0.0, seed=1, bias=True)

    (entry,) = describe_conv_layers(_fused(layer, torch_to_relax))

    assert entry["coef_density"] == 0.0 and entry["maps_computed"] == 0
    assert entry["macs_compiled"] == 0 and entry["macs_dense"] == 8 * 8 * COUT * CIN * 9
    assert entry["kernels"].startswith("epilogue only")


class _ThreeLayers(nn.Module):
    def __init__(self, nets):
        super().__init__()
        self.a = nets.dense_conv(seed=1, padding=1)
        self.b = nets.penni_layer(density=0.2, seed=2, stride=2)
        self.c = nets.dense_conv(cout=4, seed=3, kernel=1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_layers_are_listed_in_execution_order(nets, torch_to_relax):
    layers = describe_conv_layers(_fused(_ThreeLayers(nets), torch_to_relax))

    assert [(e["index"], e["kind"], e["output"]) for e in layers] == [
        (0, "dense", [1, 8, 8, 8]), (1, "penni", [1, 8, 4, 4]), (2, "dense", [1, 4, 4, 4])]


def test_table_totals_the_layers(nets, torch_to_relax):
    layers = describe_conv_layers(_fused(_ThreeLayers(nets), torch_to_relax))
    dense = sum(e["macs_dense"] for e in layers)
    compiled = sum(e["macs_compiled"] for e in layers)

    table = format_layer_table(layers).splitlines()

    assert len(table) == 2 + len(layers) + 1  # header, rule, one row per layer, total
    assert table[-1].startswith(f"conv MACs per image: dense {dense:,}, compiled {compiled:,}")
