"""Shared helpers for the graph-pass tests: import tiny torch modules into Relax, inspect the IR,
build and run a Relax module on the host, and compare outputs at the output's scale.

Everything is seeded and small (8 channels, 8×8 images unless a test needs more), so the whole
directory runs in well under a minute and a half on two cores.

Fixtures: ``x86``; ``torch_to_relax`` and ``imported`` (the same, cached per test module);
``run_x86`` (our target's build) and ``run_plain`` (plain TVM); ``assert_close``. ``nets`` (seeded
tiny layers and inputs) and ``ir`` (IR inspection) bundle the plain helpers below, so that
parametrization tables can hold ``lambda nets: ...`` builders.
"""

from __future__ import annotations

import warnings
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from penni_deploy.frontend import LoadedModel, export_program, to_relax
from penni_deploy.models.penni_conv import PenniConv2d
from penni_deploy.models.random_weights import randomize_penni_weights_

#: Default input of the tiny test networks: batch 1, 8 channels, 8×8.
IMAGE = (1, 8, 8, 8)


@pytest.fixture(scope="session")
def x86():
    from penni_deploy.targets import get_target

    return get_target("x86")


@pytest.fixture(scope="session")
def torch_to_relax():
    """``torch_to_relax(module, shape=IMAGE)``: the Relax module of ``module`` (weights as constants)."""

    def convert(module: nn.Module, shape=IMAGE) -> tvm.IRModule:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return to_relax(export_program(LoadedModel(module.eval(), "module", None, ""), shape))

    return convert


@pytest.fixture(scope="module")
def imported(nets, torch_to_relax):
    """``imported(table, case, shape=IMAGE)``: ``(model, mod)`` for the builder ``table[case]`` (called
    with ``nets``), exported and imported once per test module; parametrize over ``case`` names."""
    cache = {}

    def get(table, case, shape=IMAGE):
        key = (id(table), case, tuple(shape))
        if key not in cache:
            model = table[case](nets)
            cache[key] = model, torch_to_relax(model, shape)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def run_x86(x86):
    """``run_x86(mod, x)``: build a rewritten module with the x86 target (our kernels) and run it."""

    def run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
        vm = relax.VirtualMachine(x86.build(mod), tvm.cpu())
        return vm["main"](tvm.runtime.tensor(x)).numpy()

    return run


@pytest.fixture(scope="session")
def run_plain(x86):
    """``run_plain(mod, x)``: build with plain TVM (no penni passes) and run; the baseline."""

    def run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
        vm = relax.VirtualMachine(tvm.compile(mod, target=x86.tvm_target), tvm.cpu())
        return vm["main"](tvm.runtime.tensor(x)).numpy()

    return run


def random_input(shape=IMAGE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_output(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """rtol 1e-5 and atol 1e-5 of the largest output magnitude."""
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1e-30))


def op_counts(mod: tvm.IRModule, func: str = "main") -> Counter:
    """Calls in ``mod[func]``: Relax ops by name (``relax.nn.conv2d``), calls of module functions as
    ``call:<name>``, and ``call_tir`` as ``call_tir:<PrimFunc name>``."""
    counts: Counter = Counter()

    def visit(expr):
        if not isinstance(expr, relax.Call):
            return
        if isinstance(expr.op, tvm.ir.Op):
            counts[expr.op.name] += 1
            if expr.op.name == "relax.call_tir":
                counts[f"call_tir:{expr.args[0].name_hint}"] += 1
        elif isinstance(expr.op, relax.GlobalVar):
            counts[f"call:{expr.op.name_hint}"] += 1

    relax.analysis.post_order_visit(mod[func], visit)
    return counts


def composite_calls(mod: tvm.IRModule, func: str = "main") -> Counter:
    """How many times ``mod[func]`` calls a composite function, by its ``Composite`` name."""
    kinds: Counter = Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, relax.GlobalVar):
            callee = mod[expr.op]
            if isinstance(callee, relax.Function) and callee.attrs is not None and "Composite" in callee.attrs:
                kinds[str(callee.attrs["Composite"])] += 1

    relax.analysis.post_order_visit(mod[func], visit)
    return kinds


def composite_functions(mod: tvm.IRModule) -> list[relax.Function]:
    """The module's composite functions, in the module's order."""
    return [f for _, f in mod.functions.items()
            if isinstance(f, relax.Function) and f.attrs is not None and "Composite" in f.attrs]


def calls_of(func: relax.Function, op_name: str) -> list[relax.Call]:
    """The calls of Relax op ``op_name`` in ``func``, in post order (producers first)."""
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name:
            found.append(expr)

    relax.analysis.post_order_visit(func, visit)
    return found


def penni_layer(cin: int = 8, cout: int = 8, *, density: float, seed: int, num_bases: int = 5,
                stride: int = 1, padding: int = 1, dilation: int = 1, bias: bool = False) -> PenniConv2d:
    """A 3×3 PenniConv2d in two-stage form with seeded random weights at coefficient ``density``."""
    layer = PenniConv2d(cin, cout, 3, stride=stride, padding=padding, dilation=dilation, num_bases=num_bases,
                        bias=bias)
    return randomize_penni_weights_(layer, density, seed)


def frozen_dense_conv(layer: PenniConv2d) -> nn.Conv2d:
    """The plain conv a traced reference PENNI model shows once ``W = C·B`` is a constant."""
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                     layer.dilation, bias=layer.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(layer.dense_weight())
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    return conv.eval()


def low_rank_conv(cin: int = 8, cout: int = 8, *, rank: int, seed: int, kernel: int = 3, bias: bool = False,
                  **conv_kwargs) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` whose (Cout·Cin) × k² kernel matrix has exactly rank ``rank``."""
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, bias=bias, **conv_kwargs)
    basis = torch.randn(rank, kernel * kernel, generator=gen)  # (rank, k²)
    coefs = torch.randn(cout * cin, rank, generator=gen) / (cin * rank) ** 0.5  # (Cout·Cin, rank)
    with torch.no_grad():
        conv.weight.copy_((coefs @ basis).reshape(cout, cin, kernel, kernel))
        if bias:
            conv.bias.copy_(torch.randn(cout, generator=gen))
    return conv.eval()


def dense_conv(cin: int = 8, cout: int = 8, *, seed: int, kernel: int = 3, bias: bool = False,
               **conv_kwargs) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` with seeded Gaussian (full-rank) weights."""
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, bias=bias, **conv_kwargs)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / conv.weight[0].numel()) ** 0.5)
        if bias:
            conv.bias.copy_(torch.randn(cout, generator=gen))
    return conv.eval()


def seeded_batch_norm(channels: int, seed: int) -> nn.BatchNorm2d:
    """An eval-mode BatchNorm2d with non-trivial seeded affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(0.5 + torch.rand(channels, generator=gen))
        bn.bias.copy_(torch.randn(channels, generator=gen))
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        bn.running_var.copy_(0.5 + torch.rand(channels, generator=gen))
    return bn.eval()


@pytest.fixture(scope="session")
def nets():
    """Seeded layer factories and inputs: ``penni_layer``, ``frozen_dense_conv``, ``low_rank_conv``,
    ``dense_conv``, ``batch_norm``, ``input``, ``torch_output``."""
    return SimpleNamespace(penni_layer=penni_layer, frozen_dense_conv=frozen_dense_conv, low_rank_conv=low_rank_conv,
                           dense_conv=dense_conv, batch_norm=seeded_batch_norm, input=random_input,
                           torch_output=torch_output)


@pytest.fixture(scope="session")
def ir():
    """IR inspection: ``op_counts``, ``composite_calls``, ``composite_functions``, ``calls_of``."""
    return SimpleNamespace(op_counts=op_counts, composite_calls=composite_calls,
                           composite_functions=composite_functions, calls_of=calls_of)


@pytest.fixture(name="assert_close", scope="session")
def assert_close_fixture():
    """``assert_close(actual, expected)``: rtol 1e-5, atol 1e-5 × max |expected|."""
    return assert_close
