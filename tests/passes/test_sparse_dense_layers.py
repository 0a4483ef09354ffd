"""Dense convs whose weights are mostly zero (a user who also magnitude-pruned them) run on the
sparse PENNI kernels in their exact one-hot PENNI form, when the cost model says it is faster."""

import numpy as np
import pytest
import torch
from torch import nn

from penni_deploy.plan import DENSE_COMPOSITE, ConvChain, Epilogue, dense_as_penni, plan_penni_layer
from penni_deploy.plan.geometry import ConvGeometry
from penni_deploy.kernels.reference import basis_conv_reference, csr_recombine_reference, dense_conv_reference
from penni_deploy.tuning import cost_model
from penni_deploy.tuning.chooser import CostModelChooser


def _pruned(layer: nn.Conv2d, density: float, seed: int) -> nn.Conv2d:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.mul_((torch.rand(layer.weight.shape, generator=gen) < density).float())
    return layer


class _PrunedNet(nn.Module):
    def __init__(self, density):
        super().__init__()
        torch.manual_seed(0)
        self.a = _pruned(nn.Conv2d(16, 64, 3, stride=2, padding=1, dilation=1), density, 1)
        self.b = _pruned(nn.Conv2d(64, 64, 1, bias=False), density, 2)
        self.c = _pruned(nn.Conv2d(64, 48, 3, padding=2, dilation=2, bias=False), density, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(h)) + h)


def _chain(geom, cout, w, epilogue=Epilogue()):
    return ConvChain(DENSE_COMPOSITE, geom, (geom.batch, cout, geom.out_height, geom.out_width), w, None, None,
                     epilogue, 0, None)


def test_one_hot_form_is_exact():
    rng = np.random.default_rng(0)
    geom = ConvGeometry(2, 5, 9, 8, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1))
    w = (rng.standard_normal((7, 5, 3, 3)) * (rng.random((7, 5, 3, 3)) < 0.3)).astype(np.float32)
    x = rng.standard_normal((2, 5, 9, 8)).astype(np.float32)
    plan = plan_penni_layer(dense_as_penni(_chain(geom, 7, w)))
    assert plan.n_maps == len(np.unique(np.flatnonzero(w.reshape(7, -1).any(axis=0))))  # only used (channel, tap)
    maps = basis_conv_reference(x, geom, plan.map_channels, plan.map_weights)
    np.testing.assert_allclose(csr_recombine_reference(maps, plan.coefs, Epilogue()),
                               dense_conv_reference(x, w, geom, Epilogue()), rtol=1e-5, atol=1e-5)


def test_cost_model_takes_sparse_only_where_it_wins():
    rng = np.random.default_rng(1)
    geom = ConvGeometry(1, 256, 28, 28, 1, 1)
    m = cost_model.Machine(lanes=16, threads=2)

    def wins(density):
        w = (rng.standard_normal((256, 256, 1, 1)) * (rng.random((256, 256, 1, 1)) < density)).astype(np.float32)
        return cost_model.sparse_dense_wins(_chain(geom, 256, w), m)

    assert wins(0.05) and wins(0.2)
    assert not wins(0.5) and not wins(1.0)
    assert cost_model.sparse_dense_wins(_chain(geom, 256, np.zeros((256, 256, 1, 1), np.float32)), m)


@pytest.mark.parametrize("density, expect_sparse", [(0.05, True), (0.9, False)])
def test_pruned_model_compiles_exactly(density, expect_sparse, compile_module):
    model = _PrunedNet(density).eval()
    shape = (2, 16, 32, 32)  # big enough that the sparse kernels' extra launch does not decide
    run, built = compile_module(model, shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run(x.numpy()), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    kernels = [layer["kernels"] for layer in built.layers]
    assert all(k.startswith("sparse") == expect_sparse for k in kernels), kernels
    if expect_sparse:
        assert all(layer["macs_compiled"] < 0.5 * layer["macs_dense"] for layer in built.layers)


def test_chooser_logs_the_sparse_choice():
    rng = np.random.default_rng(2)
    geom = ConvGeometry(1, 64, 16, 16, 3, 3, (1, 1), (1, 1, 1, 1))
    w = (rng.standard_normal((64, 64, 3, 3)) * (rng.random((64, 64, 3, 3)) < 0.05)).astype(np.float32)
    chooser = CostModelChooser(lanes=16, threads=2)
    assert chooser.dense(_chain(geom, 64, w)) == "sparse"
    assert chooser.dense(_chain(geom, 64, np.ones((64, 64, 3, 3), np.float32))) == "hand"
