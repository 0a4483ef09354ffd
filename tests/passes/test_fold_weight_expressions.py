"""FoldWeightExpressions: ops that only shape or scale constant weights become constants (NumPy)."""

import logging

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from penni_deploy.passes import FoldWeightExpressions, graph_passes, run_passes
from penni_deploy.passes.ir_utils import const_value

_rng = np.random.default_rng(0)
A = _rng.standard_normal((2, 3, 4)).astype(np.float32)
B = _rng.standard_normal((3, 4)).astype(np.float32)
POSITIVE = (_rng.random((2, 3, 4)) + 0.5).astype(np.float32)
I = np.array([-7, 7, -8, 9], np.int32)
J = np.array([2, -2, 3, 4], np.int32)

#: Every op the pass evaluates, on constants; TVM's own compiled evaluation is the reference.
WEIGHT_OPS = {
    "reshape": lambda: relax.op.reshape(relax.const(A), (6, 4)),
    "expand_dims": lambda: relax.op.expand_dims(relax.const(A), [0]),
    "squeeze": lambda: relax.op.squeeze(relax.const(A[:, :1]), [1]),
    "broadcast_to": lambda: relax.op.broadcast_to(relax.const(B), (2, 3, 4)),
    "tile": lambda: relax.op.tile(relax.const(B), (2, 1, 3)),
    "permute_dims": lambda: relax.op.permute_dims(relax.const(A), [2, 0, 1]),
    "permute_dims_reverse": lambda: relax.op.permute_dims(relax.const(A)),
    "sqrt": lambda: relax.op.sqrt(relax.const(POSITIVE)),
    "rsqrt": lambda: relax.op.rsqrt(relax.const(POSITIVE)),
    "negative": lambda: relax.op.negative(relax.const(A)),
    "astype_int32": lambda: relax.op.astype(relax.const(A * 3), "int32"),
    "add_broadcast": lambda: relax.op.add(relax.const(A), relax.const(B)),
    "subtract": lambda: relax.op.subtract(relax.const(A), relax.const(B)),
    "multiply": lambda: relax.op.multiply(relax.const(A), relax.const(B)),
    "divide": lambda: relax.op.divide(relax.const(A), relax.const(POSITIVE)),
    "divide_int32_negative": lambda: relax.op.divide(relax.const(I), relax.const(J)),
    "nested_tile_of_reshape": lambda: relax.op.tile(relax.op.reshape(relax.const(B), (1, 12)), (3, 1)),
}

#: Ops on activations (or on an activation and a constant): nothing to fold.
ACTIVATION_OPS = {
    "reshape_x": lambda x: relax.op.reshape(x, (8, 64)),
    "permute_x": lambda x: relax.op.permute_dims(x, [0, 2, 3, 1]),
    "sqrt_x": lambda x: relax.op.sqrt(x),
    "x_plus_const": lambda x: relax.op.add(x, relax.const(np.ones((1, 8, 1, 1), np.float32))),
    "const_times_x": lambda x: relax.op.multiply(relax.const(np.full((1, 8, 1, 1), 2.0, np.float32)), x),
}


def _module(make_body, params=()):
    bb = relax.BlockBuilder()
    with bb.function("main", list(params)):
        with bb.dataflow():
            out = bb.emit_output(make_body(*params))
        bb.emit_func_output(out)
    return bb.get()


def _returned_constant(mod):
    return const_value(mod["main"].body.body)


class _PenniWithBatchNormAndLinear(nn.Module):
    """Every kind of weight expression the importer makes: tiled basis, reshaped coefficients and
    bias, BatchNorm statistics and a transposed Linear weight."""

    def __init__(self, nets):
        super().__init__()
        self.conv = nets.penni_layer(density=0.3, seed=1, bias=True)
        self.bn = nets.batch_norm(8, seed=2)
        self.fc = nn.Linear(8, 4)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(4, 8, generator=gen))
            self.fc.bias.copy_(torch.randn(4, generator=gen))

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("make_call", WEIGHT_OPS.values(), ids=WEIGHT_OPS.keys())
def test_weight_op_becomes_the_constant_tvm_computes(make_call, x86):
    mod = _module(make_call)
    expected = relax.VirtualMachine(tvm.compile(mod, target=x86.tvm_target), tvm.cpu())["main"]().numpy()

    folded = FoldWeightExpressions()(mod)

    value = _returned_constant(folded)
    assert value is not None, folded.script()
    assert value.dtype == expected.dtype and value.shape == expected.shape
    np.testing.assert_array_equal(value, expected)


def test_imported_penni_layer_weights_become_constants(nets, torch_to_relax, ir):
    mod = torch_to_relax(nets.penni_layer(density=0.5, seed=0, bias=True))
    before = ir.op_counts(mod)
    assert before["relax.tile"] == 1 and before["relax.reshape"] == 3  # basis, coefficients, bias

    folded = FoldWeightExpressions()(mod)

    assert ir.op_counts(folded) == {"relax.nn.conv2d": 2, "relax.add": 1}
    basis_conv, recombine = ir.calls_of(folded["main"], "relax.nn.conv2d")
    assert const_value(basis_conv.args[1]).shape == (8 * 5, 1, 3, 3)
    assert const_value(recombine.args[1]).shape == (8, 8 * 5, 1, 1)
    (bias_add,) = ir.calls_of(folded["main"], "relax.add")
    assert const_value(bias_add.args[1]).shape == (1, 8, 1, 1)


@pytest.mark.parametrize("make_body", ACTIVATION_OPS.values(), ids=ACTIVATION_OPS.keys())
def test_ops_on_activations_are_left_alone(make_body):
    mod = _module(make_body, [relax.Var("x", relax.TensorType((1, 8, 8, 8), "float32"))])

    tvm.ir.assert_structural_equal(FoldWeightExpressions()(mod), mod)


def test_second_run_changes_nothing(nets, torch_to_relax):
    once = FoldWeightExpressions()(torch_to_relax(_PenniWithBatchNormAndLinear(nets)))

    tvm.ir.assert_structural_equal(FoldWeightExpressions()(once), once)


def test_output_unchanged(nets, torch_to_relax, run_plain, assert_close):
    model = _PenniWithBatchNormAndLinear(nets)
    mod = torch_to_relax(model)
    x = nets.input()

    expected = run_plain(mod, x)
    assert_close(run_plain(FoldWeightExpressions()(mod), x), expected)
    assert_close(expected, nets.torch_output(model, x))


@pytest.mark.parametrize("pipeline", ["penni", "dense"])
def test_fires_first_in_each_pipeline(pipeline, nets, torch_to_relax, ir, caplog):
    mod = torch_to_relax(nets.penni_layer(density=0.5, seed=0, bias=True))

    with caplog.at_level(logging.INFO, logger="penni_deploy.passes"):
        out, _ = run_passes(mod, graph_passes(pipeline))

    # reshape + tile of the basis, reshape of the coefficients, reshape of the bias
    assert "FoldWeightExpressions: folded 4 expressions" in caplog.messages
    counts = ir.op_counts(out)
    assert counts["relax.tile"] == 0 and counts["relax.reshape"] == 0


def test_reference_dense_form_weight_becomes_constant(nets, torch_to_relax, ir):
    layer = nets.penni_layer(density=0.1, seed=0)
    layer.form = "dense"  # what reference checkpoints trace to: conv2d(x, (C @ B).reshape(...))
    mod = torch_to_relax(layer)

    folded = FoldWeightExpressions()(mod)

    (conv,) = ir.calls_of(folded["main"], "relax.nn.conv2d")
    assert const_value(conv.args[1]) is not None
