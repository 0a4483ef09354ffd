"""FactorLowRankConv: a dense k×k conv with a rank-d kernel becomes basis conv (groups=Cin) + 1×1 conv."""

import logging

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from penni_deploy.passes import (
    FactorLowRankConv,
    FoldWeightExpressions,
    graph_passes,
    run_passes,
)
from penni_deploy.plan import DENSE_COMPOSITE, PENNI_COMPOSITE
from penni_deploy.passes.ir_utils import const_value

WIDE = (1, 32, 8, 8)  # enough kernels that every basis of a 3%-dense layer is used alone by several


def _grouped_low_rank(nets):
    """groups=2 conv whose (Cout·Cin/2)×9 kernel matrix has rank 2: grouped convs are not PENNI layers."""
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        conv.weight.copy_((torch.randn(32, 2, generator=gen) @ torch.randn(2, 9, generator=gen)).reshape(8, 4, 3, 3))
    return conv.eval()


#: case -> (builder, rank d, input shape)
LOW_RANK = {
    "rank1": (lambda nets: nets.low_rank_conv(rank=1, seed=1, padding=1), 1, None),
    "rank3": (lambda nets: nets.low_rank_conv(rank=3, seed=3, padding=1), 3, None),
    "rank5": (lambda nets: nets.low_rank_conv(rank=5, seed=5, padding=1), 5, None),
    "stride2_pad1": (lambda nets: nets.low_rank_conv(rank=3, seed=2, stride=2, padding=1), 3, None),
    "pad0_dilation2": (lambda nets: nets.low_rank_conv(rank=2, seed=4, dilation=2), 2, None),
    "bias": (lambda nets: nets.low_rank_conv(rank=3, seed=6, padding=1, bias=True), 3, None),
    "5x5_rank4": (lambda nets: nets.low_rank_conv(rank=4, seed=8, kernel=5, padding=2), 4, None),
    "16_out": (lambda nets: nets.low_rank_conv(cout=16, rank=2, seed=9, padding=1), 2, None),
    "penni_reference_3pct": (lambda nets: nets.frozen_dense_conv(
        nets.penni_layer(32, 32, density=0.03, seed=0)), 5, WIDE),
    "penni_reference_10pct": (lambda nets: nets.frozen_dense_conv(
        nets.penni_layer(32, 32, density=0.1, seed=0)), 5, WIDE),
}
_BUILDERS = {case: builder for case, (builder, _, _) in LOW_RANK.items()}

#: Convs that must stay as they are.
NOT_FACTORED = {
    "full_rank_3x3": lambda nets: nets.dense_conv(seed=1, padding=1),
    "pointwise_1x1": lambda nets: nets.low_rank_conv(rank=1, seed=1, kernel=1),
    "grouped_low_rank": _grouped_low_rank,
    "rank6_above_max_bases": lambda nets: nets.low_rank_conv(rank=6, seed=1, padding=1),
    "already_two_stage_penni": lambda nets: nets.penni_layer(density=0.3, seed=1),
}


def _prepared(imported, case):
    model, mod = imported(_BUILDERS, case, LOW_RANK[case][2] or (1, 8, 8, 8))
    return model, FoldWeightExpressions()(mod)


@pytest.mark.parametrize("case", LOW_RANK)
def test_low_rank_conv_becomes_basis_conv_plus_pointwise(case, imported, ir):
    model, mod = _prepared(imported, case)
    rank = LOW_RANK[case][1]
    cout, cin, kh, kw = model.weight.shape
    (original,) = ir.calls_of(mod["main"], "relax.nn.conv2d")

    out = FactorLowRankConv()(mod)

    basis_conv, recombine = ir.calls_of(out["main"], "relax.nn.conv2d")
    # x → basis conv → recombination: the basis conv reads the original input, the 1×1 conv reads its maps.
    assert basis_conv.args[0].same_as(original.args[0])
    (maps_binding,) = [b for b in out["main"].body.blocks[0].bindings if b.var.same_as(recombine.args[0])]
    assert maps_binding.value.same_as(basis_conv)
    assert int(basis_conv.attrs.groups) == cin
    assert const_value(basis_conv.args[1]).shape == (cin * rank, 1, kh, kw)
    for attr in ("strides", "padding", "dilation"):
        assert [int(v) for v in getattr(basis_conv.attrs, attr)] == [int(v) for v in getattr(original.attrs, attr)]
    assert int(recombine.attrs.groups) == 1
    assert const_value(recombine.args[1]).shape == (cout, cin * rank, 1, 1)
    assert [int(v) for v in recombine.attrs.strides] == [1, 1]
    assert not any(int(p) for p in recombine.attrs.padding)
    # The bias add, if any, is left where it was, after the recombination.
    assert ir.op_counts(out)["relax.add"] == (1 if model.bias is not None else 0)


@pytest.mark.parametrize("density", [0.03, 0.1], ids=["3pct", "10pct"])
def test_factorization_keeps_coefficient_sparsity(density, imported, ir, nets):
    case = f"penni_reference_{int(density * 100)}pct"
    _, mod = _prepared(imported, case)
    original = nets.penni_layer(32, 32, density=density, seed=0).coefs.detach().numpy()  # same seed: same layer

    out = FactorLowRankConv()(mod)

    _, recombine = ir.calls_of(out["main"], "relax.nn.conv2d")
    recovered = const_value(recombine.args[1])  # (Cout, Cin·d, 1, 1)
    assert np.count_nonzero(recovered) == np.count_nonzero(original) > 0


@pytest.mark.parametrize("case", NOT_FACTORED)
def test_conv_that_is_not_a_low_rank_dense_conv_stays(case, imported):
    _, mod = imported(NOT_FACTORED, case)
    mod = FoldWeightExpressions()(mod)

    tvm.ir.assert_structural_equal(FactorLowRankConv()(mod), mod)


def test_conv_with_weight_not_constant_stays():
    x = relax.Var("x", relax.TensorType((1, 8, 8, 8), "float32"))
    w = relax.Var("w", relax.TensorType((8, 8, 3, 3), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, w, padding=1, out_dtype="float32"))
        bb.emit_func_output(out)
    mod = bb.get()

    tvm.ir.assert_structural_equal(FactorLowRankConv()(mod), mod)


def test_max_bases_option_limits_the_rank(imported):
    _, mod = _prepared(imported, "rank3")

    tvm.ir.assert_structural_equal(FactorLowRankConv(max_bases=2)(mod), mod)
    assert not FactorLowRankConv(max_bases=3)(mod).same_as(mod)


@pytest.mark.parametrize("case", ["rank3", "penni_reference_3pct"])
def test_second_run_changes_nothing(case, imported):
    _, mod = _prepared(imported, case)
    once = FactorLowRankConv()(mod)

    tvm.ir.assert_structural_equal(FactorLowRankConv()(once), once)


@pytest.mark.parametrize("case", ["rank3", "stride2_pad1", "pad0_dilation2", "bias", "5x5_rank4",
                                  "penni_reference_10pct"])
def test_output_unchanged(case, imported, nets, run_plain, assert_close):
    model, mod = _prepared(imported, case)
    x = nets.input(LOW_RANK[case][2] or (1, 8, 8, 8))

    expected = nets.torch_output(model, x)
    assert_close(run_plain(mod, x), expected)
    assert_close(run_plain(FactorLowRankConv()(mod), x), expected)


class _TwoLowRankOneDense(nn.Module):
    def __init__(self, nets):
        super().__init__()
        self.a = nets.low_rank_conv(rank=3, seed=1, padding=1, bias=True)
        self.b = nets.frozen_dense_conv(nets.penni_layer(density=0.5, seed=2))
        self.c = nets.dense_conv(seed=3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_fires_in_penni_pipeline_once_per_low_rank_conv(nets, torch_to_relax, ir, caplog):
    mod = torch_to_relax(_TwoLowRankOneDense(nets))

    with caplog.at_level(logging.INFO, logger="penni_deploy.passes"):
        out, _ = run_passes(mod, graph_passes("penni"))

    assert "FactorLowRankConv: factored 2 dense convs into basis + coefficients" in caplog.messages
    assert ir.composite_calls(out) == {PENNI_COMPOSITE: 2, DENSE_COMPOSITE: 1}


def test_dense_pipeline_does_not_factor(nets, torch_to_relax, ir):
    out, timings = run_passes(torch_to_relax(_TwoLowRankOneDense(nets)), graph_passes("dense"))

    assert "FactorLowRankConv" not in timings
    assert ir.composite_calls(out) == {DENSE_COMPOSITE: 3}


# --- regressions of bugs found by these tests -----------------------------------------------------------

def test_second_run_changes_nothing_with_one_input_channel(nets, torch_to_relax):
    mod = FoldWeightExpressions()(torch_to_relax(nets.dense_conv(cin=1, cout=4, seed=1, padding=1), (1, 1, 8, 8)))
    once = FactorLowRankConv()(mod)

    tvm.ir.assert_structural_equal(FactorLowRankConv()(once), once)


def test_tiny_full_rank_conv_stays(nets, torch_to_relax):
    mod = FoldWeightExpressions()(torch_to_relax(nets.dense_conv(cin=2, cout=2, seed=1, padding=1), (1, 2, 8, 8)))

    tvm.ir.assert_structural_equal(FactorLowRankConv()(mod), mod)
