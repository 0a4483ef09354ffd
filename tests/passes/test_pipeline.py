"""Named graph pipelines: pass order, options, per-pass errors, and what each pipeline makes of a tiny CNN."""

import pytest
import torch
import tvm
from torch import nn

from penni_deploy.errors import PenniError
from penni_deploy.passes import PIPELINES, PipelineOptions, graph_passes, run_passes
from penni_deploy.plan import DENSE_COMPOSITE, PENNI_COMPOSITE

EXPECTED_ORDER = {
    "penni": ["FoldWeightExpressions", "FoldBatchNorm", "FactorLowRankConv", "FuseConvEpilogues"],
    "dense": ["FoldWeightExpressions", "FoldBatchNorm", "FuseConvEpilogues"],
}


class _TinyNet(nn.Module):
    """stem conv-bn-relu → PENNI basic block (two-stage layers) → low-rank dense conv-bn-relu
    (a traced reference PENNI layer) → 1×1 conv → pool → Linear."""

    def __init__(self, nets):
        super().__init__()
        self.stem = nn.Sequential(nets.dense_conv(seed=1, padding=1), nets.batch_norm(8, seed=2), nn.ReLU())
        self.c1, self.b1 = nets.penni_layer(density=0.1, seed=3), nets.batch_norm(8, seed=4)
        self.c2, self.b2 = nets.penni_layer(density=0.1, seed=5), nets.batch_norm(8, seed=6)
        self.low_rank = nn.Sequential(nets.frozen_dense_conv(nets.penni_layer(density=0.5, seed=7)),
                                      nets.batch_norm(8, seed=8), nn.ReLU())
        self.pointwise = nets.dense_conv(seed=9, kernel=1, bias=True)
        self.fc = nn.Linear(8, 10)
        gen = torch.Generator().manual_seed(10)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(10, 8, generator=gen))
            self.fc.bias.copy_(torch.randn(10, generator=gen))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        x = self.pointwise(self.low_rank(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def tiny_net(nets, torch_to_relax):
    model = _TinyNet(nets).eval()
    return model, torch_to_relax(model)


@pytest.mark.parametrize("name", EXPECTED_ORDER)
def test_pipeline_lists_its_passes_in_order(name):
    assert [p.info.name for p in graph_passes(name)] == EXPECTED_ORDER[name]


def test_every_named_pipeline_is_tested():
    assert set(PIPELINES) == set(EXPECTED_ORDER)


def test_unknown_pipeline_names_the_candidates():
    with pytest.raises(PenniError, match=r"unknown pipeline 'fast'.*penni.*dense"):
        graph_passes("fast")


def test_penni_pipeline_on_tiny_net(tiny_net, ir):
    _, mod = tiny_net

    out, timings = run_passes(mod, graph_passes("penni"))

    assert list(timings) == EXPECTED_ORDER["penni"] and all(t >= 0 for t in timings.values())
    # two two-stage PENNI layers + the factored low-rank conv; the stem and the 1×1 conv stay dense
    assert ir.composite_calls(out) == {PENNI_COMPOSITE: 3, DENSE_COMPOSITE: 2}
    counts = ir.op_counts(out)
    assert counts["relax.nn.batch_norm"] == 0 and counts["relax.nn.conv2d"] == 0


def test_dense_pipeline_never_makes_penni_composites(tiny_net, ir):
    _, mod = tiny_net

    out, timings = run_passes(mod, graph_passes("dense"))

    assert list(timings) == EXPECTED_ORDER["dense"]
    # stem, the two 1×1 recombinations, the low-rank conv (not factored) and the 1×1 conv
    assert ir.composite_calls(out) == {DENSE_COMPOSITE: 5}
    counts = ir.op_counts(out)
    assert counts["relax.nn.batch_norm"] == 0
    assert counts["relax.nn.conv2d"] == 2  # the grouped basis convs, left to legalization


@pytest.mark.parametrize("name", EXPECTED_ORDER)
def test_pipeline_output_matches_torch(name, tiny_net, nets, run_x86, assert_close):
    model, mod = tiny_net
    out, _ = run_passes(mod, graph_passes(name))
    x = nets.input(seed=4)

    assert_close(run_x86(out, x), nets.torch_output(model, x))


def test_options_reach_the_factor_pass(nets, torch_to_relax, ir):
    mod = torch_to_relax(nets.low_rank_conv(rank=3, seed=1, padding=1))

    default, _ = run_passes(mod, graph_passes("penni"))
    limited, _ = run_passes(mod, graph_passes("penni", PipelineOptions(max_bases=2)))

    assert ir.composite_calls(default) == {PENNI_COMPOSITE: 1}
    assert ir.composite_calls(limited) == {DENSE_COMPOSITE: 1}


@tvm.transform.module_pass(opt_level=0, name="Exploding")
class _Exploding:
    def transform_module(self, mod, _ctx):
        raise RuntimeError("boom\nsecond line of detail")


@pytest.mark.parametrize(("position", "after"), [(0, "none"), (2, "FoldWeightExpressions, FoldBatchNorm")],
                         ids=["first", "third"])
def test_failing_pass_is_named_with_those_before_it(position, after, tiny_net):
    _, mod = tiny_net
    passes = graph_passes("penni")
    passes.insert(position, _Exploding())

    with pytest.raises(PenniError) as info:
        run_passes(mod, passes)

    assert str(info.value) == f"pass Exploding failed (after: {after}): RuntimeError: boom"
    assert isinstance(info.value.__cause__, RuntimeError)


def test_run_passes_on_no_passes_returns_the_module(tiny_net):
    _, mod = tiny_net

    out, timings = run_passes(mod, [])

    assert out.same_as(mod) and timings == {}


def test_reference_dense_form_penni_layer_is_factored(nets, torch_to_relax, ir, run_x86, assert_close):
    layer = nets.penni_layer(density=0.1, seed=1, bias=True)
    layer.form = "dense"
    mod = torch_to_relax(layer)

    out, _ = run_passes(mod, graph_passes("penni"))

    assert ir.composite_calls(out) == {PENNI_COMPOSITE: 1}
    x = nets.input()
    assert_close(run_x86(out, x), nets.torch_output(layer, x))
