"""The cost model picks each evaluation order where it should win, and ranks formats sensibly."""

import numpy as np
import pytest
import torch

from penni_deploy.kernels.config import KernelConfig
from penni_deploy.plan import PENNI_COMPOSITE, ConvChain, ConvGeometry, Epilogue, plan_penni_layer
from penni_deploy.tuning import cost_model

MACHINE = cost_model.Machine(lanes=16, threads=2)


def _plan(cin, cout, size, stride, density, seed=0, d=5):
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((d, 3, 3)).astype(np.float32)
    coefs = rng.standard_normal((cout, cin * d)).astype(np.float32)
    coefs *= rng.random(coefs.shape) < density
    g = ConvGeometry(1, cin, size, size, 3, 3, (stride, stride), (1, 1, 1, 1), (1, 1))
    out = (1, cout, g.out_height, g.out_width)
    chain = ConvChain(PENNI_COMPOSITE, g, out, coefs, np.tile(basis, (cin, 1, 1)).reshape(cin * d, 1, 3, 3), None,
                      Epilogue(), 0, None)
    return plan_penni_layer(chain)


def test_coefficient_first_wins_for_many_inputs_few_outputs():
    # 256 inputs, 4 outputs, stride 1: mixing first leaves 4·5 rows to convolve instead of ~1280 maps
    plan = _plan(256, 4, 16, 1, 0.5)
    basis_first = cost_model.estimate(plan, KernelConfig(), MACHINE)
    coef_first = cost_model.estimate(plan, KernelConfig(order="coef_first"), MACHINE)
    assert coef_first < basis_first / 2
    assert cost_model.choose(plan, MACHINE).order == "coef_first"


def test_basis_first_wins_after_stride_2_and_for_wide_outputs():
    # stride 2: coefficient-first mixes at 4× the output pixels; and 64 → 128 makes more rows than maps
    plan = _plan(64, 128, 16, 2, 0.05)
    assert cost_model.choose(plan, MACHINE).order == "basis_first"
    plan = _plan(16, 128, 16, 1, 0.3)
    assert cost_model.choose(plan, MACHINE).order == "basis_first"


def test_unshared_bases_never_pick_coefficient_first():
    plan = _plan(256, 4, 16, 1, 0.5)
    kernels = plan.chain.basis_weight.copy()
    kernels[7] += 1  # channel 1's basis differs
    chain = ConvChain(PENNI_COMPOSITE, plan.chain.geometry, plan.chain.out_shape, plan.chain.weight, kernels, None,
                      Epilogue(), 0, None)
    plan = plan_penni_layer(chain)
    assert plan.coef_first() is None
    assert cost_model.estimate(plan, KernelConfig(order="coef_first"), MACHINE) == float("inf")
    assert cost_model.choose(plan, MACHINE).order == "basis_first"


@pytest.mark.parametrize("density", [0.0001, 0.03, 1.0])
def test_estimates_are_finite_and_positive_at_any_density(density):
    from penni_deploy.tuning.space import candidates

    plan = _plan(32, 32, 8, 1, density, seed=3)
    assert plan.coefs.nnz > 0

    for config in candidates(plan):
        cost = cost_model.estimate(plan, config, MACHINE)
        assert 0 < cost < float("inf")


def test_coefficient_first_plan_is_exact():
    """The coefficient-first factorization reproduces the layer (NumPy, against torch)."""
    plan = _plan(6, 5, 7, 1, 0.4, seed=2)
    cf = plan.coef_first()
    x = np.random.default_rng(1).standard_normal((1, 6, 7, 7)).astype(np.float32)
    u = (cf.mix @ x.reshape(6, -1)).reshape(1, -1, 7, 7)
    conv = torch.nn.functional.conv2d(torch.from_numpy(u), torch.from_numpy(cf.row_weights[:, None]), padding=1,
                                      groups=cf.n_rows).numpy()[0]
    got = np.stack([conv[cf.row_ptr[o]:cf.row_ptr[o + 1]].sum(0) for o in range(5)])
    w = plan.chain.weight.reshape(5, 6, 5) @ plan.chain.basis_weight.reshape(6, 5, 9)[0]
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w.reshape(5, 6, 3, 3)),
                                          padding=1).numpy()[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
