"""int8 convs handing the next one their output as quantized words (``passes/int8_handoff.py``):
which producers write words, words only or both, and that a build with the handoffs computes
bit for bit what the same build computes without them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny_model
from torch import nn
from tvm import relax

from penni_deploy.compiler import CompileOptions, compile_program
from penni_deploy.frontend import export_program, to_relax
from penni_deploy.frontend.load_model import LoadedModel
from penni_deploy.machine import cpu_flags
from penni_deploy.models import PenniConv2d
from penni_deploy.passes import PipelineOptions, graph_passes, lower_conv_composites, run_passes
from penni_deploy.passes.conv_chain import read_conv_chain
from penni_deploy.passes.int8_handoff import Int8HandoffPlan, plan_int8_handoffs
from penni_deploy.plan.quantize import InputQuantization, Int8Handoff

SHAPE = (2, 3, 12, 12)
needs_vnni = pytest.mark.skipif("avx512_vnni" not in (cpu_flags() or []), reason="this CPU has no AVX512_VNNI")


class TwoBlockNet(nn.Module):
    """stem → ReLU → [conv1 → ReLU → conv2 (+ the block's input) → ReLU] → conv3 → ReLU → pool → Linear:
    the stem's output feeds an int8 conv and a residual add (words and float32), conv1's and conv2's
    only the next conv (words only), conv3's a pooling (float32 only)."""

    def __init__(self):
        super().__init__()
        self.stem = PenniConv2d(3, 8, 3, padding=1)
        self.conv1 = PenniConv2d(8, 8, 3, padding=1)
        self.conv2 = PenniConv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 6, 3, stride=2, padding=1)  # Cout not a multiple of four
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.conv2(torch.relu(self.conv1(h))) + h)
        return self.fc(torch.relu(self.conv3(h)).mean(dim=(2, 3)))


class OptionANet(nn.Module):
    """stem → ReLU → [conv_a (stride 2, 8 → 16) → ReLU → conv_b (+ the option-A shortcut of the
    stem's output: every second pixel, ``pad`` zero channels on each side) → ReLU] → pool → Linear."""

    pad = 4  # whole channel quads: the shortcut is read from the stem's words

    def __init__(self):
        super().__init__()
        self.stem = PenniConv2d(3, 8, 3, padding=1)
        self.conv_a = PenniConv2d(8, 8 + 2 * self.pad, 3, stride=2, padding=1)
        self.conv_b = PenniConv2d(8 + 2 * self.pad, 8 + 2 * self.pad, 3, padding=1)
        self.fc = nn.Linear(8 + 2 * self.pad, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        shortcut = nn.functional.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return self.fc(torch.relu(self.conv_b(torch.relu(self.conv_a(h))) + shortcut).mean(dim=(2, 3)))


class OptionANetSigned(OptionANet):
    """No ReLU on the stem: its codes centre on 128, the pads' code of zero."""

    def forward(self, x):
        h = self.stem(x)
        shortcut = nn.functional.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return self.fc(torch.relu(self.conv_b(torch.relu(self.conv_a(h))) + shortcut).mean(dim=(2, 3)))


class OptionANetSharedSlice(OptionANet):
    """The subsampled block input also feeds the output directly: its float32 is needed."""

    def forward(self, x):
        h = torch.relu(self.stem(x))
        sub = h[:, :, ::2, ::2]
        shortcut = nn.functional.pad(sub, (0, 0, 0, 0, self.pad, self.pad))
        out = torch.relu(self.conv_b(torch.relu(self.conv_a(h))) + shortcut).mean(dim=(2, 3))
        return self.fc(out) + sub.mean()


class OptionANetHalfQuads(OptionANet):
    pad = 2  # channels shifted by half a quad: the words cannot be, the shortcut stays float32


def _program(cls=TwoBlockNet):
    return export_program(LoadedModel(tiny_model(cls), "module", None, ""), SHAPE)


def _graph(cls=TwoBlockNet):
    mod, _ = run_passes(to_relax(_program(cls)), graph_passes("penni", PipelineOptions()))
    return mod


def _all_int8(calls, quant):
    def int8_layer(call):
        return next(((c.input_param, c.residual_param, quant) for v, c in calls if v.same_as(call)), None)

    return int8_layer


def _composite_calls(mod):
    for binding in mod["main"].body.blocks[0].bindings:
        value = binding.value
        if isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar):
            func = mod[value.op]
            if func.attrs is not None and "Composite" in func.attrs:
                yield value, read_conv_chain(func)


def test_producers_write_words_where_only_int8_convs_read_them():
    mod = _graph()
    calls = list(_composite_calls(mod))
    assert len(calls) == 4
    same = InputQuantization(0.1, 0)

    def int8_layer(call):
        return next(((c.input_param, c.residual_param, same) for v, c in calls if v.same_as(call)), None)

    handoffs = plan_int8_handoffs(mod, int8_layer, residual_words=False).layers
    stem, conv1, conv2, conv3 = (handoffs.get(v, Int8Handoff()) for v, _ in calls)
    assert stem == Int8Handoff(quads_in=False, float_out=True, out=same)  # also the residual
    assert conv1 == Int8Handoff(quads_in=True, float_out=False, out=same)
    assert conv2 == Int8Handoff(quads_in=True, float_out=False, out=same)
    assert conv3 == Int8Handoff(quads_in=True, float_out=True, out=None)  # the pooling reads float32

    # the shortcut reading the stem's words too: no float32 of the stem's output at all
    handoffs = plan_int8_handoffs(mod, int8_layer).layers
    stem, conv1, conv2, conv3 = (handoffs.get(v, Int8Handoff()) for v, _ in calls)
    assert stem == Int8Handoff(quads_in=False, float_out=False, out=same)
    assert conv2 == Int8Handoff(quads_in=True, float_out=False, out=same, residual=same)
    assert conv1.residual is None and conv3 == Int8Handoff(quads_in=True, float_out=True, out=None)

    # conv1 left in float32: the stem has no int8 reader of its own output, conv1 none of its input
    def without_conv1(call):
        return None if call.same_as(calls[1][0]) else int8_layer(call)

    handoffs = plan_int8_handoffs(mod, without_conv1).layers
    assert calls[0][0] not in handoffs and calls[1][0] not in handoffs
    assert handoffs[calls[2][0]] == Int8Handoff(False, False, same)

    # two readers quantizing one tensor differently: each quantizes the float32 itself
    other = InputQuantization(0.2, 0)
    tiny_mod = run_passes(to_relax(export_program(LoadedModel(tiny_model(), "module", None, ""), SHAPE)),
                          graph_passes("penni", PipelineOptions()))[0]
    tiny_calls = list(_composite_calls(tiny_mod))
    quants = [same, same, other]  # the stem, then its two readers (the block's conv, the shortcut)

    def differing(call):
        return next(((c.input_param, c.residual_param, q) for (v, c), q in zip(tiny_calls, quants)
                     if v.same_as(call)), None)

    assert plan_int8_handoffs(tiny_mod, differing).layers == {}


def test_an_option_a_shortcut_is_read_from_the_words_in_whole_channel_quads():
    same = InputQuantization(0.1, 0)
    mod = _graph(OptionANet)
    calls = list(_composite_calls(mod))
    plan = plan_int8_handoffs(mod, _all_int8(calls, same))
    stem, conv_a, conv_b = (plan.layers.get(v, Int8Handoff()) for v, _ in calls)
    assert stem == Int8Handoff(quads_in=False, float_out=False, out=same)  # nothing reads its float32
    assert conv_b == Int8Handoff(quads_in=True, float_out=True, out=None, residual=same)
    (chain,) = plan.sliced.values()
    stem_var = next(b.var for b in mod["main"].body.blocks[0].bindings if b.value.same_as(calls[0][0]))
    assert chain.source.same_as(stem_var)
    assert [op.op.name for op in chain.ops] == ["relax.strided_slice", "relax.strided_slice", "relax.nn.pad"]
    assert plan.dropped() == set(chain.bindings) and len(chain.bindings) == 3

    # without shortcut words, or channels padded by half a quad: the slicing reads the float32
    assert not plan_int8_handoffs(mod, _all_int8(calls, same), residual_words=False).sliced
    # ... and where a slice on the way is read by anything else
    for cls in (OptionANetHalfQuads, OptionANetSharedSlice):
        mod = _graph(cls)
        calls = list(_composite_calls(mod))
        plan = plan_int8_handoffs(mod, _all_int8(calls, same))
        assert not plan.sliced and plan.layers[calls[0][0]].float_out
        assert plan.layers.get(calls[2][0], Int8Handoff()).residual is None


def _build(monkeypatch, options, plan, cls=TwoBlockNet):
    planned = []
    monkeypatch.setattr(lower_conv_composites, "plan_int8_handoffs",
                        lambda mod, int8_layer: planned.append(plan(mod, int8_layer)) or planned[-1])
    built = compile_program(_program(cls), SHAPE, options)
    return built, planned[-1]


@needs_vnni
def test_handoffs_change_no_bit_of_the_result_but_the_shortcuts_rounding(monkeypatch):
    import tvm

    rng = np.random.default_rng(4)
    calib = np.maximum(rng.standard_normal((8, *SHAPE[1:])), -1).astype(np.float32)
    options = CompileOptions(precision="int8", calibration=calib, int8_layers="all")
    builds = {
        "none": _build(monkeypatch, options, lambda mod, layer: Int8HandoffPlan()),
        "inputs": _build(monkeypatch, options, lambda mod, layer: plan_int8_handoffs(mod, layer, residual_words=False)),
        "default": _build(monkeypatch, options, plan_int8_handoffs),
    }
    assert sorted(h.quads_in for h in builds["inputs"][1].layers.values()) == [False, True, True, True]
    assert [h.residual is not None for h in builds["default"][1].layers.values()].count(True) == 1
    x = calib[:2]
    out = {name: relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
           for name, (built, _) in builds.items()}
    np.testing.assert_array_equal(out["inputs"], out["none"])  # the same codes, rounded where they were
    with torch.inference_mode():
        expected = tiny_model(TwoBlockNet)(torch.from_numpy(x)).numpy()
    scale = np.abs(expected).max()
    assert np.abs(out["inputs"] - expected).max() / scale < 5e-2
    # the shortcut in 8 bits: one rounding more, of the size of int8's own error
    assert 0 < np.abs(out["default"] - out["inputs"]).max() / scale < 2e-2
    assert np.abs(out["default"] - expected).max() / scale < 5e-2
    # the kernel table still gives every layer its kernel (a words-only layer's binding is new)
    for built, _ in builds.values():
        assert [k["layer"] for k in built.kernels if k["op"] in ("penni", "dense")] == [0, 1, 2, 3]


@needs_vnni
@pytest.mark.parametrize("cls", [OptionANet, OptionANetSigned, OptionANetHalfQuads])
def test_an_option_a_shortcut_from_words_rounds_it_once(monkeypatch, cls):
    import tvm

    rng = np.random.default_rng(5)
    calib = np.maximum(rng.standard_normal((8, *SHAPE[1:])), -1).astype(np.float32)
    options = CompileOptions(precision="int8", calibration=calib, int8_layers="all")
    builds = {
        "float shortcut": _build(monkeypatch, options, lambda mod, layer: plan_int8_handoffs(mod, layer, False), cls),
        "default": _build(monkeypatch, options, plan_int8_handoffs, cls),
    }
    assert len(builds["default"][1].sliced) == (cls is not OptionANetHalfQuads)
    x = calib[:2]
    out = {name: relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
           for name, (built, _) in builds.items()}
    with torch.inference_mode():
        expected = tiny_model(cls)(torch.from_numpy(x)).numpy()
    scale = np.abs(expected).max()
    assert np.abs(out["float shortcut"] - expected).max() / scale < 5e-2
    assert np.abs(out["default"] - expected).max() / scale < 5e-2
    difference = np.abs(out["default"] - out["float shortcut"]).max() / scale
    assert (0 < difference < 2e-2) if cls is not OptionANetHalfQuads else difference == 0
    for built, _ in builds.values():
        assert [k["layer"] for k in built.kernels if k["op"] in ("penni", "dense")] == [0, 1, 2]
