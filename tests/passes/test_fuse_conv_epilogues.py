"""FuseConvEpilogues: PENNI layers and dense convs, with bias, residual and ReLU, become composites."""

import pytest
import torch
import tvm
from torch import nn

from penni_deploy.plan import Epilogue
from penni_deploy.passes import (
    FoldWeightExpressions,
    FuseConvEpilogues,
    graph_passes,
    run_passes,
)
from penni_deploy.passes.conv_chain import read_conv_chain
from penni_deploy.plan import DENSE_COMPOSITE, PENNI_COMPOSITE

KINDS = {"penni": PENNI_COMPOSITE, "dense": DENSE_COMPOSITE}


class _Chain(nn.Module):
    """conv [+ bias] [+ residual, either operand order] [→ ReLU]; the residual is ``-x`` (or ``x``)."""

    def __init__(self, nets, kind, bias=False, residual=None, relu=False):
        super().__init__()
        self.conv = (nets.penni_layer(density=0.3, seed=1, bias=bias) if kind == "penni"
                     else nets.dense_conv(seed=1, padding=1, bias=bias))
        self.residual, self.relu = residual, relu

    def forward(self, x):
        y = self.conv(x)
        r = x if self.residual == "input_ry" else -x
        if self.residual == "yr":
            y = y + r
        elif self.residual in ("ry", "input_ry"):
            y = r + y
        return torch.relu(y) if self.relu else y


#: case -> (kind, bias, residual, relu)
CHAINS = {
    "penni": ("penni", False, None, False),
    "penni_bias": ("penni", True, None, False),
    "penni_relu": ("penni", False, None, True),
    "penni_bias_relu": ("penni", True, None, True),
    "penni_res_yr": ("penni", False, "yr", False),
    "penni_res_ry": ("penni", False, "ry", False),
    "penni_bias_res_yr_relu": ("penni", True, "yr", True),
    "penni_bias_res_ry_relu": ("penni", True, "ry", True),
    "penni_res_is_input_relu": ("penni", False, "input_ry", True),
    "dense": ("dense", False, None, False),
    "dense_bias_relu": ("dense", True, None, True),
    "dense_res_yr": ("dense", False, "yr", False),
    "dense_bias_res_ry_relu": ("dense", True, "ry", True),
}
_BUILDERS = {case: (lambda nets, spec=spec: _Chain(nets, *spec)) for case, spec in CHAINS.items()}


def _fused(imported, table, case, penni=True):
    model, mod = imported(table, case)
    return model, FuseConvEpilogues(penni=penni)(FoldWeightExpressions()(mod))


@pytest.mark.parametrize("case", CHAINS)
def test_chain_becomes_one_composite_with_its_epilogue(case, imported, ir):
    kind, bias, residual, relu = CHAINS[case]
    _, mod = _fused(imported, _BUILDERS, case)

    assert ir.composite_calls(mod) == {KINDS[kind]: 1}
    main = ir.op_counts(mod)
    assert main["relax.nn.conv2d"] == main["relax.add"] == main["relax.nn.relu"] == 0  # all inside
    (composite,) = ir.composite_functions(mod)
    inside = ir.op_counts(tvm.IRModule({"main": composite}))
    assert inside["relax.nn.conv2d"] == (2 if kind == "penni" else 1)
    assert inside["relax.add"] == bias + (residual is not None)
    assert inside["relax.nn.relu"] == relu
    assert read_conv_chain(composite).epilogue == Epilogue(bias, residual is not None, relu)


@pytest.mark.parametrize("case", CHAINS)
def test_output_matches_torch(case, imported, nets, run_x86, assert_close):
    model, mod = _fused(imported, _BUILDERS, case)
    x = nets.input()

    assert_close(run_x86(mod, x), nets.torch_output(model, x))


@pytest.mark.parametrize("case", ["penni_bias_res_ry_relu", "dense_bias_res_ry_relu"])
def test_second_run_changes_nothing(case, imported):
    _, once = _fused(imported, _BUILDERS, case)

    tvm.ir.assert_structural_equal(FuseConvEpilogues()(once), once)


# --- bail-outs ------------------------------------------------------------------------------------------

class _IntermediateUsedTwice(nn.Module):
    """relu(y) * y with y = conv(x) + b: the bias add may fuse, the ReLU may not (y is needed outside)."""

    def __init__(self, nets, kind):
        super().__init__()
        self.conv = (nets.penni_layer(density=0.3, seed=1, bias=True) if kind == "penni"
                     else nets.dense_conv(seed=1, padding=1, bias=True))

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(y) * y


class _SharedBasisConv(nn.Module):
    """Two 1×1 recombinations of one basis conv: the maps are used twice, so no PENNI layer fuses."""

    def __init__(self, nets):
        super().__init__()
        self.a = nets.penni_layer(density=0.3, seed=1)
        self.w2 = nn.Parameter(torch.randn(8, 40, 1, 1, generator=torch.Generator().manual_seed(2)))

    def forward(self, x):
        w1 = self.a.basis.reshape(5, 1, 3, 3).repeat(8, 1, 1, 1)  # (Cin·d, 1, 3, 3)
        maps = nn.functional.conv2d(x, w1, padding=1, groups=8)
        return nn.functional.conv2d(maps, self.a.coefs.reshape(8, 40, 1, 1)) + nn.functional.conv2d(maps, self.w2)


class _GroupedThenPointwise(nn.Module):
    """groups=2 3×3 conv then a 1×1 conv: not a per-channel basis convolution."""

    def __init__(self, nets):
        super().__init__()
        self.grouped = nets.dense_conv(seed=1, padding=1, groups=2)
        self.pointwise = nets.dense_conv(seed=2, kernel=1)

    def forward(self, x):
        return self.pointwise(self.grouped(x))


class _ConvPlusConstant(nn.Module):
    """conv(x) + a constant that is not a per-channel bias."""

    def __init__(self, nets, shape):
        super().__init__()
        self.conv = nets.dense_conv(seed=1, padding=1)
        self.c = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(3)))

    def forward(self, x):
        return torch.relu(self.conv(x) + self.c)


class _BroadcastResidual(nn.Module):
    """conv(x) + mean(x) over the image: a broadcasting add, not a residual."""

    def __init__(self, nets):
        super().__init__()
        self.conv = nets.penni_layer(density=0.3, seed=1)

    def forward(self, x):
        return self.conv(x) + x.mean(dim=(2, 3), keepdim=True)


BAIL_OUTS = {
    # case: (builder, expected composites, main ops left unfused, expected epilogue of the one composite)
    "penni_intermediate_used_twice": (lambda nets: _IntermediateUsedTwice(nets, "penni"), {PENNI_COMPOSITE: 1},
                                      {"relax.nn.relu": 1, "relax.multiply": 1}, Epilogue(bias=True)),
    "dense_intermediate_used_twice": (lambda nets: _IntermediateUsedTwice(nets, "dense"), {DENSE_COMPOSITE: 1},
                                      {"relax.nn.relu": 1, "relax.multiply": 1}, Epilogue(bias=True)),
    "shared_basis_conv": (_SharedBasisConv, {DENSE_COMPOSITE: 2}, {"relax.nn.conv2d": 1}, None),
    "grouped_conv_not_a_basis_conv": (_GroupedThenPointwise, {DENSE_COMPOSITE: 1}, {"relax.nn.conv2d": 1}, None),
    "spatial_constant_add": (lambda nets: _ConvPlusConstant(nets, (1, 1, 8, 8)), {DENSE_COMPOSITE: 1},
                             {"relax.add": 1, "relax.nn.relu": 1}, Epilogue()),
    "scalar_constant_add": (lambda nets: _ConvPlusConstant(nets, ()), {DENSE_COMPOSITE: 1},
                            {"relax.add": 1, "relax.nn.relu": 1}, Epilogue()),
    "broadcast_residual": (_BroadcastResidual, {PENNI_COMPOSITE: 1}, {"relax.add": 1}, Epilogue()),
}
_BAIL_OUT_BUILDERS = {case: spec[0] for case, spec in BAIL_OUTS.items()}


@pytest.mark.parametrize("case", BAIL_OUTS)
def test_what_cannot_fuse_stays_outside(case, imported, ir):
    _, composites, left_in_main, epilogue = BAIL_OUTS[case]
    _, mod = _fused(imported, _BAIL_OUT_BUILDERS, case)

    assert ir.composite_calls(mod) == composites
    main = ir.op_counts(mod)
    assert {op: main[op] for op in left_in_main} == left_in_main
    if epilogue is not None:
        (composite,) = ir.composite_functions(mod)
        assert read_conv_chain(composite).epilogue == epilogue


@pytest.mark.parametrize("case", ["penni_intermediate_used_twice", "shared_basis_conv", "spatial_constant_add",
                                  "broadcast_residual"])
def test_bail_out_output_matches_torch(case, imported, nets, run_x86, assert_close):
    model, mod = _fused(imported, _BAIL_OUT_BUILDERS, case)
    x = nets.input()

    assert_close(run_x86(mod, x), nets.torch_output(model, x))


def test_penni_false_groups_only_dense_convs(imported, ir):
    _, mod = _fused(imported, _BUILDERS, "penni_bias_res_yr_relu", penni=False)

    # The 1×1 recombination is a dense conv; the grouped basis conv is left to legalization.
    assert ir.composite_calls(mod) == {DENSE_COMPOSITE: 1}
    assert ir.op_counts(mod)["relax.nn.conv2d"] == 1


class _BasicBlock(nn.Module):
    """A ResNet basic block of two PENNI convs with BatchNorm: conv-bn-relu, conv-bn (+x) relu."""

    def __init__(self, nets):
        super().__init__()
        self.c1, self.b1 = nets.penni_layer(density=0.1, seed=1), nets.batch_norm(8, seed=2)
        self.c2, self.b2 = nets.penni_layer(density=0.1, seed=3), nets.batch_norm(8, seed=4)

    def forward(self, x):
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


def test_fires_in_pipeline_once_per_conv_chain(nets, torch_to_relax, ir):
    out, _ = run_passes(torch_to_relax(_BasicBlock(nets)), graph_passes("penni"))

    assert ir.composite_calls(out) == {PENNI_COMPOSITE: 2}
    assert set(ir.op_counts(out)) == {f"call:{gv.name_hint}" for gv, f in out.functions.items()
                                      if f.attrs is not None and "Composite" in f.attrs}
    epilogues = sorted(read_conv_chain(f).epilogue.describe() for f in ir.composite_functions(out))
    assert epilogues == ["+bias+relu", "+bias+res+relu"]


# --- regressions of bugs found by these tests -----------------------------------------------------------

def test_full_shape_constant_add_is_not_taken_for_a_bias(nets, torch_to_relax, run_x86, assert_close):
    model = _ConvPlusConstant(nets, (1, 8, 8, 8))
    mod, _ = run_passes(torch_to_relax(model), graph_passes("penni"))
    x = nets.input()

    for composite in mod.functions.values():
        if composite.attrs is not None and "Composite" in composite.attrs:
            assert not read_conv_chain(composite).epilogue.bias
    assert_close(run_x86(mod, x), nets.torch_output(model, x))
