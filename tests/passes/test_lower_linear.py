"""LowerLinear: constant-weight Linear layers run on the CPU GEMM kernel, exactly; anything else
(an activation × activation matmul, a target without the kernel) keeps TVM's matmul."""

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from penni_deploy.frontend import export_program, to_relax
from penni_deploy.frontend.load_model import LoadedModel
from penni_deploy.kernels.cpu import CpuKernels
from penni_deploy.kernels.gpu import GpuKernels
from penni_deploy.passes import LowerLinear, graph_passes, run_passes


class _Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 70), nn.Linear(70, 5, bias=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class _Bilinear(nn.Module):
    def forward(self, x):
        a = x.flatten(2)  # (N, C, H·W): an activation × activation product, no constant weight
        return a @ a.transpose(1, 2)


def _graph(module, shape):
    torch.manual_seed(0)
    program = export_program(LoadedModel(module.eval(), "module", None, ""), shape)
    mod, _ = run_passes(to_relax(program), graph_passes("penni"))
    return mod


def _calls(mod, name):
    count = 0

    def visit(expr):
        nonlocal count
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.call_tir":
            count += expr.args[0].name_hint.startswith(name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return count


@pytest.mark.parametrize("batch", [1, 3, 9])
def test_linear_layers_run_on_the_kernel_exactly(batch, compile_module):
    torch.manual_seed(0)
    model = _Classifier().eval()
    shape = (batch, 3, 2, 2)
    assert _calls(LowerLinear(CpuKernels(lanes=16, threads=2))(_graph(model, shape)), "linear") == 2
    run, _ = compile_module(model, shape)
    x = torch.randn(shape)
    np.testing.assert_allclose(run(x.numpy()), model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_other_matmuls_and_other_targets_are_left_alone():
    mod = _graph(_Bilinear(), (2, 3, 4, 4))
    assert LowerLinear(CpuKernels(lanes=16))(mod).same_as(mod)
    mod = _graph(_Classifier(), (1, 3, 2, 2))
    assert LowerLinear(GpuKernels(on_gpu=False))(mod).same_as(mod)
