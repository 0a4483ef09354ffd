import numpy as np
import pytest
import torch
import torch.nn.functional as F

from penni_deploy.kernels.cpu import dense_conv_kernel, needs_im2col
from penni_deploy.plan import Epilogue
from penni_deploy.plan.geometry import ConvGeometry
from penni_deploy.kernels.reference import dense_conv_reference

CASES = {
    "1x1": dict(h=8, w=8, k=1, stride=(1, 1), pad=(0, 0, 0, 0), dil=(1, 1), cout=16),
    "1x1-stride2": dict(h=9, w=9, k=1, stride=(2, 2), pad=(0, 0, 0, 0), dil=(1, 1), cout=12),
    "3x3-pad1": dict(h=10, w=10, k=3, stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1), cout=10),
    "3x3-stride2-dil2-odd": dict(h=13, w=11, k=3, stride=(2, 2), pad=(2, 2, 2, 2), dil=(2, 2), cout=7),
    "7x7-stride2": dict(h=21, w=21, k=7, stride=(2, 2), pad=(3, 3, 3, 3), dil=(1, 1), cout=9),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("epilogue", [Epilogue(), Epilogue(bias=True, residual=True, relu=True)], ids=["plain", "fused"])
@pytest.mark.parametrize("batch", [1, 2])
def test_dense_conv_matches_torch(case, epilogue, batch, run_primfunc):
    rng = np.random.default_rng(1)
    cin, k, cout = 5, case["k"], case["cout"]
    geom = ConvGeometry(batch, cin, case["h"], case["w"], k, k, case["stride"], case["pad"], case["dil"])
    x = rng.standard_normal((batch, cin, case["h"], case["w"])).astype(np.float32)
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    residual = rng.standard_normal((batch, cout, geom.out_height * geom.out_width)).astype(np.float32)

    args = [x, w.reshape(cout, -1)] + ([bias] if epilogue.bias else []) + ([residual] if epilogue.residual else [])
    out = run_primfunc(dense_conv_kernel(geom, cout, epilogue), *args,
                       np.full((batch, cout, geom.out_height * geom.out_width), np.nan, np.float32))

    top, left, bottom, right = case["pad"]
    ref = F.conv2d(F.pad(torch.from_numpy(x), (left, right, top, bottom)), torch.from_numpy(w),
                   stride=case["stride"], dilation=case["dil"]).reshape(out.shape)
    if epilogue.bias:
        ref = ref + torch.from_numpy(bias)[None, :, None]
    if epilogue.residual:
        ref = torch.relu(ref + torch.from_numpy(residual))
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dense_conv_reference(x, w, geom, epilogue, bias, residual), ref.numpy(), rtol=1e-4, atol=1e-4)


def test_im2col_skipped_only_for_plain_pointwise():
    assert not needs_im2col(ConvGeometry(1, 4, 8, 8, 1, 1))
    assert needs_im2col(ConvGeometry(1, 4, 8, 8, 1, 1, stride=(2, 2)))
    assert needs_im2col(ConvGeometry(1, 4, 8, 8, 3, 3, padding=(1, 1, 1, 1)))
