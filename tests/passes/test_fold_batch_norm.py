"""FoldBatchNorm: inference BatchNorm after a conv (optionally + bias) folds into the conv and a bias add."""

import logging

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from penni_deploy.passes import (
    FoldBatchNorm,
    FoldWeightExpressions,
    graph_passes,
    run_passes,
)
from penni_deploy.passes.ir_utils import const_value

C = 8
#: An image whose H·W equals C, so that a (1, 1, H, W) constant has as many entries as a channel bias.
SMALL_IMAGE = (1, C, 2, 4)

#: conv (+ bias) → BatchNorm, each of which folds.
FOLDABLE = {
    "conv": lambda nets: nn.Sequential(nets.dense_conv(seed=1, padding=1), nets.batch_norm(C, seed=2)),
    "conv_bias": lambda nets: nn.Sequential(nets.dense_conv(seed=1, padding=1, bias=True), nets.batch_norm(C, seed=2)),
    "conv_stride2_nopad": lambda nets: nn.Sequential(nets.dense_conv(seed=1, stride=2), nets.batch_norm(C, seed=2)),
    "depthwise": lambda nets: nn.Sequential(nets.dense_conv(seed=1, padding=1, groups=C), nets.batch_norm(C, seed=2)),
    "pointwise_16_out": lambda nets: nn.Sequential(nets.dense_conv(cout=16, seed=1, kernel=1),
                                                   nets.batch_norm(16, seed=2)),
    "penni": lambda nets: nn.Sequential(nets.penni_layer(density=0.3, seed=1), nets.batch_norm(C, seed=2)),
    "penni_bias": lambda nets: nn.Sequential(nets.penni_layer(density=0.3, seed=1, bias=True),
                                             nets.batch_norm(C, seed=2)),
}

#: BatchNorms that have no conv to fold into.
NOT_AFTER_CONV = {
    "on_input": lambda nets: nets.batch_norm(C, seed=2),
    "after_relu": lambda nets: nn.Sequential(nets.dense_conv(seed=1, padding=1), nn.ReLU(), nets.batch_norm(C, seed=2)),
    "after_pool": lambda nets: nn.Sequential(nets.dense_conv(seed=1, padding=1), nn.AvgPool2d(2),
                                             nets.batch_norm(C, seed=2)),
}


def _conv_bn_module(*, bias_shape=None, weight_param=False, stats_params=False, axis=1, center=True, scale=True,
                    training=False, out_dtype="float32", seed=0):
    """``conv2d → [add const] → batch_norm → [0]`` built by hand, for the cases the importer never makes."""
    rng = np.random.default_rng(seed)
    x = relax.Var("x", relax.TensorType(SMALL_IMAGE, "float32"))
    params = [x]
    weight = relax.const(rng.standard_normal((C, C, 3, 3)).astype(np.float32))
    if weight_param:
        weight = relax.Var("w", relax.TensorType((C, C, 3, 3), "float32"))
        params.append(weight)
    n = SMALL_IMAGE[axis]  # the conv keeps the image's shape
    gamma, beta = (rng.random(n) + 0.5).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    mean, var = rng.standard_normal(n).astype(np.float32), (rng.random(n) + 0.5).astype(np.float32)
    stats = [relax.const(s) for s in (gamma, beta, mean, var)]
    if stats_params:
        stats = [relax.Var(name, relax.TensorType((n,), "float32")) for name in ("gamma", "beta", "mean", "var")]
        params += stats
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, weight, padding=1, out_dtype=out_dtype))
            if bias_shape is not None:
                y = bb.emit(relax.op.add(y, relax.const(rng.standard_normal(bias_shape).astype(np.float32))))
            bn = bb.emit(relax.op.nn.batch_norm(y, *stats, axis=axis, epsilon=1e-5, center=center, scale=scale,
                                                training=training))
            out = bb.emit_output(relax.TupleGetItem(bn, 0))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("case", FOLDABLE)
def test_batch_norm_after_conv_folds(case, imported, ir):
    _, mod = imported(FOLDABLE, case)
    mod = FoldWeightExpressions()(mod)
    before = ir.op_counts(mod)
    assert before["relax.nn.batch_norm"] == 1

    after = ir.op_counts(FoldBatchNorm()(mod))

    assert after["relax.nn.batch_norm"] == 0
    assert after["relax.nn.conv2d"] == before["relax.nn.conv2d"]
    assert after["relax.add"] == 1  # the conv's own bias, if any, is merged into the folded shift


def test_rewrite_is_scaled_weight_plus_shift():
    """Before/Expected: ``bn(conv(x, W) + b)`` is ``conv(x, W·s) + (b·s + β − μ·s)``, ``s = γ/√(σ²+ε)``."""
    before = _conv_bn_module(bias_shape=(1, C, 1, 1))
    bindings = before["main"].body.blocks[0].bindings
    conv, bias_add, bn = (b.value for b in bindings[:3])
    weight, bias = const_value(conv.args[1]), const_value(bias_add.args[1]).reshape(-1)
    gamma, beta, mean, var = (const_value(a).astype(np.float64) for a in bn.args[1:])
    s = gamma / np.sqrt(var + 1e-5)  # (C,)
    new_weight = (weight.astype(np.float64) * s[:, None, None, None]).astype(np.float32)  # (C, C, 3, 3)
    shift = (beta - mean * s + bias * s).reshape(1, C, 1, 1).astype(np.float32)

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SMALL_IMAGE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(new_weight), padding=1, out_dtype="float32"))
            out = bb.emit_output(relax.op.add(y, relax.const(shift)))
        bb.emit_func_output(out)
    expected = bb.get()

    tvm.ir.assert_structural_equal(FoldBatchNorm()(before), expected)


@pytest.mark.parametrize("case", NOT_AFTER_CONV)
def test_batch_norm_not_after_conv_stays(case, imported, ir):
    _, mod = imported(NOT_AFTER_CONV, case)
    mod = FoldWeightExpressions()(mod)

    out = FoldBatchNorm()(mod)

    tvm.ir.assert_structural_equal(out, mod)
    assert ir.op_counts(out)["relax.nn.batch_norm"] == 1


BAIL_OUTS = {
    "conv_weight_not_constant": dict(weight_param=True),
    "statistics_not_constant": dict(stats_params=True),
    "not_channel_axis": dict(axis=3),
}


@pytest.mark.parametrize("kwargs", BAIL_OUTS.values(), ids=BAIL_OUTS.keys())
def test_unfoldable_batch_norm_stays(kwargs):
    mod = _conv_bn_module(**kwargs)

    tvm.ir.assert_structural_equal(FoldBatchNorm()(mod), mod)


def test_second_run_changes_nothing(nets, torch_to_relax):
    model = nn.Sequential(nets.penni_layer(density=0.3, seed=1), nets.batch_norm(C, seed=2), nn.ReLU(),
                          nets.dense_conv(seed=3, padding=1, bias=True), nets.batch_norm(C, seed=4))
    once = FoldBatchNorm()(FoldWeightExpressions()(torch_to_relax(model)))

    tvm.ir.assert_structural_equal(FoldBatchNorm()(once), once)


@pytest.mark.parametrize("case", ["conv_bias", "conv_stride2_nopad", "depthwise", "penni_bias"])
def test_output_unchanged(case, imported, nets, run_plain, assert_close):
    model, mod = imported(FOLDABLE, case)
    mod = FoldWeightExpressions()(mod)
    x = nets.input()

    expected = nets.torch_output(model, x)
    assert_close(run_plain(mod, x), expected)
    assert_close(run_plain(FoldBatchNorm()(mod), x), expected)


class _ThreeFoldableOneNot(nn.Module):
    def __init__(self, nets):
        super().__init__()
        self.stem = nn.Sequential(nets.dense_conv(seed=1, padding=1), nets.batch_norm(C, seed=2), nn.ReLU())
        self.penni = nn.Sequential(nets.penni_layer(density=0.3, seed=3), nets.batch_norm(C, seed=4))
        self.conv = nn.Sequential(nets.dense_conv(seed=5, padding=1, bias=True), nets.batch_norm(C, seed=6))
        self.after_relu = nets.batch_norm(C, seed=7)

    def forward(self, x):
        y = self.stem(x)
        return self.after_relu(torch.relu(self.conv(y) + self.penni(y)))


@pytest.mark.parametrize("pipeline", ["penni", "dense"])
def test_fires_in_pipeline_once_per_foldable_batch_norm(pipeline, nets, torch_to_relax, ir, caplog):
    mod = torch_to_relax(_ThreeFoldableOneNot(nets))

    with caplog.at_level(logging.INFO, logger="penni_deploy.passes"):
        out, _ = run_passes(mod, graph_passes(pipeline))

    assert "FoldBatchNorm: folded 3 BatchNorm ops" in caplog.messages
    assert ir.op_counts(out)["relax.nn.batch_norm"] == 1


# --- regressions of bugs found by these tests -----------------------------------------------------------

_NUMERIC_BUGS = {
    "spatial_bias_with_HW_eq_C": pytest.param(
        dict(bias_shape=(1, 1, 2, 4))),
    "full_shape_bias": pytest.param(
        dict(bias_shape=(1, C, 2, 4))),
    "center_false": pytest.param(
        dict(center=False)),
    "scale_false": pytest.param(
        dict(scale=False)),
    "training_mode": pytest.param(
        dict(training=True)),
}


@pytest.mark.parametrize("kwargs", _NUMERIC_BUGS.values(), ids=_NUMERIC_BUGS.keys())
def test_hand_built_batch_norm_folds_correctly_or_stays(kwargs, run_plain, assert_close):
    mod = _conv_bn_module(**kwargs)
    x = np.random.default_rng(1).standard_normal(SMALL_IMAGE).astype(np.float32)

    assert_close(run_plain(FoldBatchNorm()(mod), x), run_plain(mod, x))


def test_conv_with_default_out_dtype_folds(ir):
    mod = _conv_bn_module(out_dtype=None)

    assert ir.op_counts(FoldBatchNorm()(mod))["relax.nn.batch_norm"] == 0


def test_torch_affine_false_batch_norm_folds(torch_to_relax, run_plain, assert_close, nets, ir):
    """The importer marks BatchNorm2d(affine=False) center=False, scale=False with γ = 1, β = 0."""
    bn = nn.BatchNorm2d(C, affine=False).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.linspace(-1, 1, C))
        bn.running_var.copy_(torch.linspace(0.5, 2, C))
    model = nn.Sequential(nets.dense_conv(seed=1, padding=1), bn)
    mod = FoldWeightExpressions()(torch_to_relax(model))
    x = nets.input()

    folded = FoldBatchNorm()(mod)

    assert ir.op_counts(folded)["relax.nn.batch_norm"] == 0
    assert_close(run_plain(folded, x), nets.torch_output(model, x))
