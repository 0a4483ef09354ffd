"""Every KernelConfig computes the same layer: each order, format, fusion and blocking against PyTorch
on edge-case layers (stride 2, padding 0, dilation, odd sizes, empty rows, 100% and 3% density,
batch 2, bias + residual + ReLU epilogues)."""

import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from penni_deploy.kernels.config import KernelConfig
from penni_deploy.passes import LowerConvComposites, graph_passes, run_passes
from penni_deploy.tuning.chooser import FixedChooser


class _Layer(nn.Module):
    def __init__(self, conv, residual=False, relu=False):
        super().__init__()
        self.conv, self.residual, self.relu = conv, residual, relu

    def forward(self, x):
        y = self.conv(x)
        y = y + x[:, : y.shape[1]] if self.residual else y
        return torch.relu(y) if self.relu else y


def _empty_rows(nets):
    layer = nets.penni_layer(8, 8, density=0.4, seed=11, bias=True)
    with torch.no_grad():
        layer.coefs.view(8, 8, 5)[2:5] = 0  # outputs 2..4 read nothing: epilogue only
    return _Layer(layer, residual=True, relu=True)


CASES = {
    "3pct_bias_res_relu": (lambda nets: _Layer(nets.penni_layer(density=0.03, seed=1, bias=True), True, True),
                           (1, 8, 8, 8)),
    "dense_coefs_batch2": (lambda nets: _Layer(nets.penni_layer(density=1.0, seed=2), relu=True), (2, 8, 8, 8)),
    "stride2_odd_size": (lambda nets: _Layer(nets.penni_layer(8, 12, density=0.2, seed=3, stride=2, bias=True)),
                         (1, 8, 9, 11)),
    "pad0_dilation2": (lambda nets: _Layer(nets.penni_layer(density=0.3, seed=4, padding=0, dilation=2, num_bases=3)),
                       (1, 8, 10, 9)),
    "empty_rows": (_empty_rows, (1, 8, 7, 7)),
    "wide_stride2": (lambda nets: _Layer(nets.penni_layer(8, 8, density=0.3, seed=5, stride=2, bias=True), relu=True),
                     (2, 8, 6, 36)),
}
_BUILDERS = {case: spec[0] for case, spec in CASES.items()}

CONFIGS = [
    KernelConfig(),
    KernelConfig(block=1, balance=True),
    KernelConfig(format="ell", block=2),
    KernelConfig(format="unrolled", block=1),
    KernelConfig(fused=True, tile_rows=2),
    KernelConfig(fused=True, tile_rows=3, block=1),
    KernelConfig(order="coef_first"),
    KernelConfig(order="coef_first", format="unrolled", block=2),
    KernelConfig(order="coef_first", format="ell", balance=True),
]


@pytest.mark.parametrize("config", CONFIGS, ids=KernelConfig.describe)
@pytest.mark.parametrize("case", CASES)
def test_every_config_matches_torch(case, config, imported, nets, x86, assert_close):
    shape = CASES[case][1]
    model, mod = imported(_BUILDERS, case, shape)
    fused, _ = run_passes(mod, graph_passes("penni"))
    lowered = LowerConvComposites(x86.kernels, FixedChooser(config))(fused)
    with x86.tvm_target:
        built = x86.build(lowered)
    x = nets.input(shape, seed=5)
    got = relax.VirtualMachine(built, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert_close(got, nets.torch_output(model, x))
