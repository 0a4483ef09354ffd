"""The x86 schedules of the ops between the convs: exact against PyTorch (odd sizes, stride 2, padding,
ceil_mode, batch > 1), and scheduled the way ``schedules.py`` says (one parallel, vectorized nest per op,
padding per channel, no threads for tiny ops), so that a regression to the plain fallback fails here."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
import tvm_ffi
from torch import nn
from tvm import s_tir, tirx

from penni_deploy.compiler import CompileOptions
from penni_deploy.frontend import export_program, to_relax
from penni_deploy.frontend.load_model import LoadedModel
from penni_deploy.targets.common import pre_schedule_passes
from penni_deploy.targets.x86.schedules import PARALLEL_MIN_WORK, ScheduleBetweenConvs


class Op(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class BatchNorm1dReLU(nn.Module):
    """The VGG16 head's normalization: a dozen elementwise steps once legalized."""

    def __init__(self, n):
        super().__init__()
        self.bn = nn.BatchNorm1d(n)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return torch.relu(self.bn(x.flatten(1)))


CASES = {
    "maxpool-3s2p1-odd": (nn.MaxPool2d(3, 2, 1), (2, 5, 15, 13)),  # ResNet50's stem pool, odd sizes, batch 2
    "maxpool-3s2p1-wide": (nn.MaxPool2d(3, 2, 1), (1, 4, 40, 90)),  # output rows wider than the vector limit
    "maxpool-3s2-nopad": (nn.MaxPool2d(3, 2), (2, 3, 27, 27)),  # AlexNet's
    "maxpool-2s2": (nn.MaxPool2d(2, 2), (3, 6, 8, 10)),  # VGG16's
    "maxpool-ceil": (nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 10, 11)),
    "avgpool-4": (Op(lambda x: F.avg_pool2d(x, 4)), (2, 8, 4, 4)),  # CIFAR ResNet18's
    "avgpool-3s2p1": (nn.AvgPool2d(3, 2, 1), (2, 3, 11, 9)),
    "avgpool-exclude-pad": (nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 3, 11, 9)),
    "adaptive-avg-6": (nn.AdaptiveAvgPool2d(6), (2, 4, 13, 13)),  # AlexNet's, with uneven windows
    "adaptive-avg-1": (nn.AdaptiveAvgPool2d(1), (2, 32, 7, 7)),
    "flatten-permute": (Op(lambda x: x.permute(0, 2, 3, 1).flatten(1)), (2, 5, 3, 7)),
    "residual-add-relu": (Op(lambda x: torch.relu(x + x.flip(1) * 0.5)), (2, 6, 9, 11)),
    "batchnorm1d-relu": (BatchNorm1dReLU(48), (4, 48, 1, 1)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_ops_between_convs_match_pytorch(case, compile_module):
    module, shape = case
    run, _ = compile_module(module.eval(), shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(x), expected, rtol=1e-5, atol=1e-6)


def scheduled_primfuncs(module, shape):
    """The legalized PrimFuncs of ``module`` and what ``ScheduleBetweenConvs`` makes of each."""
    target = CompileOptions().make_target()
    mod = to_relax(export_program(LoadedModel(module.eval(), "module", None, ""), shape))
    with target.tvm_target:
        mod = tvm.transform.Sequential(pre_schedule_passes(target.kernels))(mod)
        funcs = [f for f in mod.functions.values() if isinstance(f, tirx.PrimFunc)]
        return [(f, ScheduleBetweenConvs().apply(f, target.tvm_target, False)) for f in funcs]


def loops(func) -> list:
    found = []
    tvm_ffi.structural_walk(func.body, [(tirx.For, found.append)], order="pre")
    return found


def kinds(func) -> list:
    return [loop.kind for loop in loops(func)]


def test_padded_max_pool_pads_each_channel_inside_the_parallel_loop():
    ((before, sch),) = scheduled_primfuncs(nn.MaxPool2d(3, 2, 1), (2, 8, 56, 56))
    assert sch is not None
    after = sch.mod["main"]
    (parallel,) = [loop for loop in loops(after) if loop.kind == tirx.ForKind.PARALLEL]
    assert int(parallel.extent) == 2 * 8  # one iteration per (image, channel)
    blocks = []
    tvm_ffi.structural_walk(parallel.body, [(s_tir.SBlock, lambda b: blocks.append(b.name_hint))], order="pre")
    # the padding is computed in the parallel loop, as a fill then an interior copy, before the pool
    assert blocks[:2] == ["pad_temp_pad_const", "pad_temp"] and "pool_max_update" in blocks
    assert tirx.ForKind.VECTORIZED in kinds(after)
    assert tirx.ForKind.PARALLEL not in kinds(before)


def test_elementwise_steps_become_one_loop_nest():
    ((before, sch),) = scheduled_primfuncs(BatchNorm1dReLU(32768), (1, 32768, 1, 1))
    assert len([loop for loop in loops(before) if loop.kind == tirx.ForKind.SERIAL]) > 6  # a dozen steps
    after = sch.mod["main"]
    assert kinds(after) == [tirx.ForKind.PARALLEL, tirx.ForKind.VECTORIZED]  # batch 1: the row is shared out
    assert [int(loop.extent) for loop in loops(after)] == [32768 // 16, 16]


def test_tiny_ops_run_on_one_thread():
    ((_, sch),) = scheduled_primfuncs(BatchNorm1dReLU(64), (1, 64, 1, 1))
    assert 64 < PARALLEL_MIN_WORK
    assert tirx.ForKind.PARALLEL not in kinds(sch.mod["main"])


def test_pool_window_runs_outside_the_output_row():
    ((_, sch),) = scheduled_primfuncs(nn.MaxPool2d(2, 2), (1, 64, 32, 32))
    nest = loops(sch.mod["main"])
    assert nest[0].kind == tirx.ForKind.PARALLEL and int(nest[0].extent) == 64 * 16  # (n, c, output row)
    assert nest[-1].kind == tirx.ForKind.VECTORIZED and int(nest[-1].extent) == 16  # the output row, innermost
