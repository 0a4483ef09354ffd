"""The CPU GEMM kernel of the dense layers against PyTorch, in both orientations, on the shapes that
exercise its tails: odd sizes, stride 2, padding, dilation, 7×7, pixels and channels that are not a
multiple of the register tile, batch > 1, every epilogue."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from penni_deploy.kernels.cpu import CpuKernels
from penni_deploy.kernels.cpu.gemm import (
    GemmTile,
    conv_source,
    default_tile,
    gemm_conv_kernel,
    linear_kernel,
    needs_base_table,
    pack_weights,
    pick_orientation,
)
from penni_deploy.kernels.reference import dense_conv_reference
from penni_deploy.plan import DENSE_COMPOSITE, ConvChain, Epilogue
from penni_deploy.plan.geometry import ConvGeometry

CASES = {
    "1x1": dict(cin=5, h=8, w=8, k=1, stride=(1, 1), pad=(0, 0, 0, 0), dil=(1, 1), cout=16),
    "1x1-stride2-odd": dict(cin=5, h=9, w=9, k=1, stride=(2, 2), pad=(0, 0, 0, 0), dil=(1, 1), cout=12),
    "1x1-many-pixels-tail": dict(cin=7, h=13, w=11, k=1, stride=(1, 1), pad=(0, 0, 0, 0), dil=(1, 1), cout=9),
    "3x3-pad1": dict(cin=5, h=10, w=10, k=3, stride=(1, 1), pad=(1, 1, 1, 1), dil=(1, 1), cout=10),
    "3x3-unpadded-stride2": dict(cin=4, h=11, w=12, k=3, stride=(2, 2), pad=(0, 0, 0, 0), dil=(1, 1), cout=17),
    "3x3-stride2-dil2-odd": dict(cin=5, h=13, w=11, k=3, stride=(2, 2), pad=(2, 2, 2, 2), dil=(2, 2), cout=7),
    "3x3-asymmetric-pad": dict(cin=3, h=9, w=10, k=3, stride=(1, 1), pad=(0, 1, 2, 1), dil=(1, 1), cout=5),
    "7x7-stride2": dict(cin=3, h=21, w=21, k=7, stride=(2, 2), pad=(3, 3, 3, 3), dil=(1, 1), cout=9),
    "wide-cout": dict(cin=6, h=5, w=5, k=1, stride=(1, 1), pad=(0, 0, 0, 0), dil=(1, 1), cout=70),
}
EPILOGUES = {"plain": Epilogue(), "bias+relu": Epilogue(bias=True, relu=True),
             "bias+res+relu": Epilogue(bias=True, residual=True, relu=True)}


def case_arrays(case, batch, seed):
    """``(geom, x, w, bias, residual)`` of a CASES entry: seeded random float32 arrays."""
    rng = np.random.default_rng(seed)
    cin, k, cout = case["cin"], case["k"], case["cout"]
    geom = ConvGeometry(batch, cin, case["h"], case["w"], k, k, case["stride"], case["pad"], case["dil"])
    pixels = geom.out_height * geom.out_width
    x = rng.standard_normal((batch, cin, case["h"], case["w"])).astype(np.float32)
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    residual = rng.standard_normal((batch, cout, pixels)).astype(np.float32)
    return geom, x, w, bias, residual


def _run_case(case, epilogue, batch, orientation, run_primfunc, tile=None, lanes=16, seed=1):
    geom, x, w, bias, residual = case_arrays(case, batch, seed)
    cout, pixels = case["cout"], geom.out_height * geom.out_width
    tile = tile or default_tile(lanes)
    args = [x, pack_weights(w.reshape(cout, -1), orientation, tile)]
    args += [conv_source(geom)[2]] if needs_base_table(geom) else []
    args += ([bias] if epilogue.bias else []) + ([residual] if epilogue.residual else [])
    kernel = gemm_conv_kernel(geom, cout, epilogue, lanes=lanes, threads=2, orientation=orientation, tile=tile)
    out = run_primfunc(kernel, *args, np.full((batch, cout, pixels), np.nan, np.float32))

    top, left, bottom, right = case["pad"]
    ref = F.conv2d(F.pad(torch.from_numpy(x), (left, right, top, bottom)), torch.from_numpy(w),
                   stride=case["stride"], dilation=case["dil"]).reshape(out.shape)
    if epilogue.bias:
        ref = ref + torch.from_numpy(bias)[None, :, None]
    if epilogue.residual:
        ref = ref + torch.from_numpy(residual)
    if epilogue.relu:
        ref = torch.relu(ref)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-4)
    return x, w, bias, residual, geom, ref


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("orientation", ["pixels", "channels"])
@pytest.mark.parametrize("batch", [1, 2])
def test_gemm_conv_matches_torch(case, orientation, batch, run_primfunc):
    epilogue = EPILOGUES["bias+res+relu"] if batch == 2 else EPILOGUES["plain"]
    x, w, bias, residual, geom, ref = _run_case(case, epilogue, batch, orientation, run_primfunc)
    np.testing.assert_allclose(dense_conv_reference(x, w, geom, epilogue, bias, residual), ref.numpy(),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("epilogue", EPILOGUES.values(), ids=EPILOGUES.keys())
def test_every_epilogue(epilogue, run_primfunc):
    _run_case(CASES["3x3-stride2-dil2-odd"], epilogue, 2, "pixels", run_primfunc)
    _run_case(CASES["1x1-stride2-odd"], epilogue, 1, "channels", run_primfunc)


@pytest.mark.parametrize("tile", [GemmTile(rows=3, vectors=1, lanes=8), GemmTile(rows=4, vectors=3, lanes=8)],
                         ids=["3x1x8", "4x3x8"])
def test_avx2_sized_tiles(tile, run_primfunc):
    for orientation in ("pixels", "channels"):
        _run_case(CASES["1x1-many-pixels-tail"], Epilogue(bias=True), 2, orientation, run_primfunc, tile=tile, lanes=8)


def test_every_output_is_written_when_channels_split_into_chunks(run_primfunc):
    # 70 channels = 8 full blocks of 8 + a 6-row tail block; threads=2 cuts them into chunks: a block
    # missed by the chunking would stay NaN.
    _run_case(CASES["wide-cout"], Epilogue(), 1, "pixels", run_primfunc)


def test_weights_are_packed_in_the_order_the_tile_reads():
    w = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    tile = GemmTile(rows=4, vectors=1, lanes=4)
    by_pixels = pack_weights(w, "pixels", tile)
    assert by_pixels.shape == (3, 3, 4)  # ceil(10/4) blocks, K, rows
    assert by_pixels[1, 2, 3] == w[7, 2] and np.all(by_pixels[2, :, 2:] == 0)
    by_channels = pack_weights(w, "channels", tile)
    assert by_channels.shape == (3, 3, 4) and by_channels[2, 0, 1] == w[9, 0]


def test_orientation_follows_the_tails():
    assert pick_orientation(pixels=3136, out_channels=256, lanes=16) == "pixels"
    assert pick_orientation(pixels=49, out_channels=2048, lanes=16) == "channels"  # 7×7: 49 pixels waste a vector
    assert pick_orientation(pixels=49, out_channels=10, lanes=16) == "pixels"


def test_source_kinds():
    assert conv_source(ConvGeometry(1, 4, 8, 8, 1, 1))[0] == "direct"
    assert conv_source(ConvGeometry(1, 4, 8, 8, 1, 1, stride=(2, 2)))[0] == "subsampled"
    assert conv_source(ConvGeometry(1, 4, 8, 8, 3, 3, padding=(1, 1, 1, 1)))[0] == "padded"
    assert conv_source(ConvGeometry(1, 4, 8, 8, 3, 3))[0] == "gathered"


def test_library_step_runs_the_packed_layer(run_primfunc):
    rng = np.random.default_rng(3)
    geom = ConvGeometry(1, 6, 9, 9, 3, 3, (2, 2), (1, 1, 1, 1))
    w = rng.standard_normal((11, 6, 3, 3)).astype(np.float32)
    chain = ConvChain(DENSE_COMPOSITE, geom, (1, 11, 5, 5), w, None, None, Epilogue(), 0, None)
    kernel, constants = CpuKernels(lanes=16, threads=2).dense_conv(chain)
    x = rng.standard_normal((1, 6, 9, 9)).astype(np.float32)
    out = run_primfunc(kernel, x, *constants, np.zeros((1, 11, 25), np.float32))
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1).reshape(1, 11, 25)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch, depth, out", [(1, 37, 70), (3, 64, 48), (9, 5, 7), (2, 100, 1), (8, 33, 49)])
def test_linear_kernel_matches_numpy(batch, depth, out, run_primfunc):
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, depth)).astype(np.float32)
    w = rng.standard_normal((out, depth)).astype(np.float32)
    kernel = linear_kernel(batch, depth, out, lanes=16, threads=2)
    y = run_primfunc(kernel, x, pack_weights(w, "channels", default_tile(16)),
                     np.full((batch, out), np.nan, np.float32))
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-4)
