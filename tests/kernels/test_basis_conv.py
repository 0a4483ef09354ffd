import numpy as np
import pytest
import torch
import torch.nn.functional as F

from penni_deploy.kernels.cpu import basis_conv_kernel, basis_narrow_kernel
from penni_deploy.kernels.cpu.basis_narrow import is_narrow
from penni_deploy.plan.geometry import ConvGeometry, group_maps_by_channel
from penni_deploy.kernels.reference import basis_conv_reference

CASES = {
    "3x3-pad1": dict(h=9, w=9, k=3, stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1)),
    "stride2": dict(h=16, w=16, k=3, stride=(2, 2), pad=(1, 1, 1, 1), dil=(1, 1)),
    "dilation2": dict(h=11, w=13, k=3, stride=(1, 1), pad=(2, 2, 2, 2), dil=(2, 2)),
    "odd-nopad": dict(h=7, w=5, k=3, stride=(1, 1), pad=(0, 0, 0, 0), dil=(1, 1)),
    "5x5-stride2-odd": dict(h=15, w=17, k=5, stride=(2, 2), pad=(2, 2, 2, 2), dil=(1, 1)),
    "asym-pad": dict(h=8, w=8, k=3, stride=(2, 1), pad=(0, 1, 1, 0), dil=(1, 1)),
    "wide-70": dict(h=3, w=70, k=3, stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1)),
    # column strides on rows a vector wide or more (taps read from the column phases)
    "wide-stride2": dict(h=6, w=70, k=3, stride=(2, 2), pad=(1, 1, 1, 1), dil=(1, 1)),
    "stem-7x7-stride2": dict(h=20, w=40, k=7, stride=(2, 2), pad=(3, 3, 3, 3), dil=(1, 1)),
    "column-stride3-dilation2": dict(h=5, w=80, k=3, stride=(1, 3), pad=(2, 2, 2, 2), dil=(2, 2)),
    # narrow images (basis_narrow_kernel applies too)
    "2x2": dict(h=2, w=2, k=3, stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1)),
    "4x4": dict(h=4, w=4, k=3, stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1)),
    "8x8-dilation2": dict(h=8, w=8, k=3, stride=(1, 1), pad=(2, 2, 2, 2), dil=(2, 2)),
    "5x3-asym-rows": dict(h=5, w=3, k=3, stride=(1, 1), pad=(0, 1, 2, 1), dil=(1, 1)),
    "1x1-5x5": dict(h=1, w=1, k=5, stride=(1, 1), pad=(2, 2, 2, 2), dil=(1, 1)),
    "7x9-tail": dict(h=7, w=9, k=3, stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1)),
    "8x8-stride2": dict(h=8, w=8, k=3, stride=(2, 2), pad=(1, 1, 1, 1), dil=(1, 1)),
    "7x7-stride2-odd": dict(h=7, w=7, k=3, stride=(2, 2), pad=(1, 1, 1, 1), dil=(1, 1)),
    "stride2-extra-rows": dict(h=9, w=8, k=3, stride=(2, 2), pad=(0, 1, 0, 1), dil=(1, 1)),
    "6x6-stride3": dict(h=6, w=6, k=3, stride=(3, 3), pad=(1, 1, 1, 1), dil=(1, 1)),
}
NARROW = ["2x2", "4x4", "8x8-dilation2", "5x3-asym-rows", "1x1-5x5", "7x9-tail", "8x8-stride2", "7x7-stride2-odd",
          "6x6-stride3", "stride2-extra-rows", "stride2"]


def _out_pixels(case):
    g = ConvGeometry(1, 1, case["h"], case["w"], case["k"], case["k"], case["stride"], case["pad"], case["dil"])
    return g.out_height * g.out_width


def _kernels(name):
    """(id, generator) pairs that apply to CASES[name]."""
    kernels = [("generic", lambda g, n, c: basis_conv_kernel(g, n, c))]
    if name in NARROW:
        kernels += [(f"narrow-{lanes}", lambda g, n, c, lanes=lanes: basis_narrow_kernel(g, n, c, lanes=lanes, threads=2))
                    for lanes in (16, 8) if _out_pixels(CASES[name]) <= 4 * lanes]
    return kernels


@pytest.mark.parametrize("name,kernel", [(name, kernel) for name in CASES for kernel in _kernels(name)],
                         ids=[f"{name}-{kid}" for name in CASES for kid, _ in _kernels(name)])
@pytest.mark.parametrize("batch", [1, 3])
def test_basis_conv_matches_torch(name, kernel, batch, run_primfunc):
    case = CASES[name]
    generate = kernel[1]
    rng = np.random.default_rng(0)
    cin, d, k = 6, 5, case["k"]
    geom = ConvGeometry(batch, cin, case["h"], case["w"], k, k, case["stride"], case["pad"], case["dil"])
    basis = rng.standard_normal((d, k, k)).astype(np.float32)
    # Keep a scattered subset of maps, as the compiler does for unused (channel, basis) pairs;
    # channel 2 keeps none, channel 5 keeps all.
    keep = [(i, r) for i in range(cin) for r in range(d) if (i == 5 or (i * 7 + r * 3) % 4 == 0) and i != 2]
    map_channels = np.array([i for i, _ in keep], np.int32)
    weights = np.stack([basis[r] for _, r in keep])
    channels, map_ptr = group_maps_by_channel(map_channels)
    x = rng.standard_normal((batch, cin, case["h"], case["w"])).astype(np.float32)

    func = generate(geom, len(keep), len(channels))
    out = run_primfunc(func, x, channels, map_ptr, weights, np.zeros((batch, len(keep), geom.out_height * geom.out_width), np.float32))

    # Torch: grouped conv with groups=Cin over all d bases, then pick the kept maps.
    top, left, bottom, right = case["pad"]
    xt = F.pad(torch.from_numpy(x), (left, right, top, bottom))
    full = F.conv2d(xt, torch.from_numpy(np.tile(basis, (cin, 1, 1))[:, None]), stride=case["stride"],
                    dilation=case["dil"], groups=cin).numpy()
    expected = full[:, [i * d + r for i, r in keep]].reshape(out.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(basis_conv_reference(x, geom, map_channels, weights), expected, rtol=1e-5, atol=1e-5)


def test_group_maps_rejects_unsorted():
    with pytest.raises(ValueError, match="sorted"):
        group_maps_by_channel(np.array([1, 0]))


def test_narrow_applies_to_small_outputs():
    def geom(h, w, stride=(1, 1), pad=(1, 1, 1, 1)):
        return ConvGeometry(1, 8, h, w, 3, 3, stride, pad)

    assert is_narrow(geom(4, 4), 16) and is_narrow(geom(8, 8), 16)
    assert not is_narrow(geom(8, 8), 8)  # 64 pixels are 8 AVX2 vectors
    assert is_narrow(geom(16, 16, stride=(2, 2)), 16)  # 8×8 out
    assert not is_narrow(geom(16, 16), 16)
    for name, case in CASES.items():  # the cases the test runs on each kernel are the ones it applies to
        g = ConvGeometry(1, 1, case["h"], case["w"], case["k"], case["k"], case["stride"], case["pad"], case["dil"])
        assert is_narrow(g, 16) == (name in NARROW), name
    with pytest.raises(ValueError, match="narrow"):
        basis_narrow_kernel(geom(32, 32), 8, 8)
