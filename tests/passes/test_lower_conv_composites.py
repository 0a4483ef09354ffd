"""LowerConvComposites: every conv composite becomes call_tir of kernels generated for its shapes."""

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax, tirx

from penni_deploy.passes import (
    FoldWeightExpressions,
    LowerConvComposites,
    graph_passes,
    run_passes,
)
from penni_deploy.passes.conv_chain import read_conv_chain
from penni_deploy.plan import plan_penni_layer


class _Layer(nn.Module):
    """One conv [+ residual ``-x``] [→ ReLU]; the conv is a PENNI layer or a plain conv."""

    def __init__(self, conv, residual=False, relu=False):
        super().__init__()
        self.conv, self.residual, self.relu = conv, residual, relu

    def forward(self, x):
        y = self.conv(x)
        y = y + (-x) if self.residual else y
        return torch.relu(y) if self.relu else y


def _unused_input_channel(nets):
    layer = nets.penni_layer(density=0.5, seed=4, bias=True)
    with torch.no_grad():
        layer.coefs.view(8, 8, 5)[:, 3, :] = 0  # no output reads input channel 3: its maps are never computed
    return _Layer(layer, relu=True)


def _depthwise_separable(nets):
    """A MobileNet-style block: depthwise 3×3 (a different kernel per channel) then 1×1."""
    return nn.Sequential(nets.dense_conv(seed=1, padding=1, groups=8, bias=False), nets.dense_conv(seed=2, kernel=1))


def _zero_penni(nets, bias):
    layer = nets.penni_layer(density=0.0, seed=1, bias=bias)
    if bias:
        with torch.no_grad():
            layer.bias.copy_(torch.linspace(-1, 1, 8))
    return layer


#: case -> (builder, input shape, expected kernels as {PrimFunc name prefix: calls})
CASES = {
    "penni_10pct_bias_res_relu": (lambda nets: _Layer(nets.penni_layer(density=0.1, seed=1, bias=True), True, True),
                                  (1, 8, 8, 8), {"penni_basis_conv": 1, "penni_csr_recombine": 1}),
    "penni_3pct": (lambda nets: _Layer(nets.penni_layer(density=0.03, seed=2)),
                   (1, 8, 8, 8), {"penni_basis_conv": 1, "penni_csr_recombine": 1}),
    "penni_all_coefs_nonzero": (lambda nets: _Layer(nets.penni_layer(density=1.0, seed=3), relu=True),
                                (1, 8, 8, 8), {"penni_basis_conv": 1, "penni_csr_recombine": 1}),
    "penni_stride2_16_out": (lambda nets: _Layer(nets.penni_layer(8, 16, density=0.2, seed=5, stride=2, bias=True)),
                             (1, 8, 8, 8), {"penni_basis_conv": 1, "penni_csr_recombine": 1}),
    "penni_pad0_d3": (lambda nets: _Layer(nets.penni_layer(density=0.3, seed=6, padding=0, num_bases=3), relu=True),
                      (1, 8, 8, 8), {"penni_basis_conv": 1, "penni_csr_recombine": 1}),
    "penni_batch2_res": (lambda nets: _Layer(nets.penni_layer(density=0.2, seed=7), residual=True),
                         (2, 8, 8, 8), {"penni_basis_conv": 1, "penni_csr_recombine": 1}),
    "penni_unused_input_channel": (_unused_input_channel,
                                   (1, 8, 8, 8), {"penni_basis_conv": 1, "penni_csr_recombine": 1}),
    "depthwise_separable": (_depthwise_separable, (1, 8, 8, 8), {"penni_basis_conv": 1, "penni_csr_recombine": 1}),
    "penni_all_zero_bias_res_relu": (lambda nets: _Layer(_zero_penni(nets, True), True, True), (1, 8, 8, 8), {}),
    "penni_all_zero_plain": (lambda nets: _Layer(_zero_penni(nets, False)), (1, 8, 8, 8), {}),
    "dense_stride2_bias_relu": (lambda nets: _Layer(nets.dense_conv(seed=8, stride=2, padding=1, bias=True), relu=True),
                                (1, 8, 8, 8), {"dense_conv": 1}),
    "dense_5x5_res": (lambda nets: _Layer(nets.dense_conv(seed=9, kernel=5, padding=2), residual=True),
                      (1, 8, 8, 8), {"dense_conv": 1}),
}
_BUILDERS = {case: spec[0] for case, spec in CASES.items()}


def _fused(imported, case):
    model, mod = imported(_BUILDERS, case, CASES[case][1])
    fused, _ = run_passes(mod, graph_passes("penni"))
    return model, fused


def _kernel_calls(mod):
    """{PrimFunc name without a numeric dedup suffix: call_tir count} of ``main``."""
    calls = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc):
            calls[gv.name_hint.rstrip("0123456789")] = 0
    counts = {}

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.call_tir":
            name = expr.args[0].name_hint.rstrip("0123456789")
            counts[name] = counts.get(name, 0) + 1

    relax.analysis.post_order_visit(mod["main"], visit)
    assert set(counts) == set(calls), "every generated PrimFunc is called and nothing else is"
    return counts


@pytest.mark.parametrize("case", CASES)
def test_composites_become_kernel_calls(case, imported, x86, ir):
    _, fused = _fused(imported, case)
    assert sum(ir.composite_calls(fused).values()) == 1

    lowered = LowerConvComposites(x86.kernels)(fused)

    assert ir.composite_functions(lowered) == []
    assert _kernel_calls(lowered) == CASES[case][2]
    assert ir.op_counts(lowered)["relax.nn.conv2d"] == 0


@pytest.mark.parametrize("case", ["penni_all_zero_bias_res_relu", "penni_all_zero_plain"])
def test_all_zero_penni_layer_is_its_epilogue_only(case, imported, x86, ir):
    _, fused = _fused(imported, case)

    lowered = LowerConvComposites(x86.kernels)(fused)

    assert not any(isinstance(f, tirx.PrimFunc) for f in lowered.functions.values())
    counts = ir.op_counts(lowered)
    assert counts["relax.call_tir"] == 0 and counts["relax.zeros"] == 1
    with_epilogue = case == "penni_all_zero_bias_res_relu"
    assert counts["relax.nn.relu"] == with_epilogue and counts["relax.add"] == 2 * with_epilogue


def test_only_maps_some_coefficient_reads_are_computed(imported, x86, ir):
    model, fused = _fused(imported, "penni_unused_input_channel")
    coefs = model.conv.coefs.detach().numpy().reshape(8, 8 * 5)  # (Cout, Cin·d), column i·d + r
    used_maps = int(np.count_nonzero(np.any(coefs != 0, axis=0)))
    assert used_maps <= 7 * 5

    lowered = LowerConvComposites(x86.kernels)(fused)

    (basis_call,) = [c for c in ir.calls_of(lowered["main"], "relax.call_tir")
                     if c.args[0].name_hint.startswith("penni_basis_conv")]
    assert [int(d) for d in basis_call.ty.shape] == [1, used_maps, 64]
    (composite,) = ir.composite_functions(fused)
    assert plan_penni_layer(read_conv_chain(composite)).n_maps == used_maps


@pytest.mark.parametrize("case", CASES)
def test_output_matches_torch(case, imported, nets, run_x86, assert_close):
    model, fused = _fused(imported, case)
    x = nets.input(CASES[case][1], seed=1)

    assert_close(run_x86(fused, x), nets.torch_output(model, x))


@pytest.mark.parametrize("case", ["penni_10pct_bias_res_relu", "depthwise_separable", "dense_stride2_bias_relu"])
def test_output_matches_plain_tvm_build(case, imported, nets, run_x86, run_plain, assert_close):
    """With our passes and kernels against the imported module built by plain TVM."""
    _, mod = imported(_BUILDERS, case, CASES[case][1])
    fused, _ = run_passes(mod, graph_passes("penni"))
    x = nets.input(CASES[case][1], seed=2)

    assert_close(run_x86(fused, x), run_plain(mod, x))


def test_second_run_changes_nothing(imported, x86):
    _, fused = _fused(imported, "penni_10pct_bias_res_relu")
    once = LowerConvComposites(x86.kernels)(fused)

    tvm.ir.assert_structural_equal(LowerConvComposites(x86.kernels)(once), once)


def test_module_without_composites_is_unchanged(nets, torch_to_relax, x86):
    mod = FoldWeightExpressions()(torch_to_relax(nn.Sequential(nets.batch_norm(8, seed=1), nn.ReLU())))

    tvm.ir.assert_structural_equal(LowerConvComposites(x86.kernels)(mod), mod)


class _TwoPenniOneDense(nn.Module):
    def __init__(self, nets):
        super().__init__()
        self.a = nets.penni_layer(density=0.1, seed=1, bias=True)
        self.b = nets.penni_layer(density=0.1, seed=2)
        self.c = nets.dense_conv(seed=3, kernel=1)

    def forward(self, x):
        return self.c(torch.relu(x + self.b(torch.relu(self.a(x)))))


def test_each_layer_gets_its_own_kernels(nets, torch_to_relax, x86, run_x86, assert_close):
    model = _TwoPenniOneDense(nets)
    fused, _ = run_passes(torch_to_relax(model), graph_passes("penni"))

    lowered = LowerConvComposites(x86.kernels)(fused)

    assert _kernel_calls(lowered) == {"penni_basis_conv": 2, "penni_csr_recombine": 2, "dense_conv": 1}
    x = nets.input(seed=3)
    assert_close(run_x86(fused, x), nets.torch_output(model, x))


# --- regressions of bugs found by these tests -----------------------------------------------------------

class _DoubledConv(nn.Module):
    def __init__(self, nets):
        super().__init__()
        self.conv = nets.dense_conv(seed=1, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(y + y)


def test_conv_output_added_to_itself(nets, torch_to_relax, run_x86, assert_close):
    model = _DoubledConv(nets)
    fused, _ = run_passes(torch_to_relax(model), graph_passes("penni"))
    x = nets.input()

    assert_close(run_x86(fused, x), nets.torch_output(model, x))
