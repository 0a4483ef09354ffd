"""The GPU kernels' arithmetic, checked on the CPU: the same generators with ``on_gpu=False`` emit
the identical index math as loops, compiled for the host and compared with PyTorch."""

import numpy as np
import pytest
import scipy.sparse
import torch
import torch.nn.functional as F

from penni_deploy.plan import Epilogue
from penni_deploy.plan.geometry import ConvGeometry
from penni_deploy.kernels.gpu import (
    TileGrid,
    basis_conv_gpu_kernel,
    csr_recombine_gpu_kernel,
    dense_conv_gpu_kernel,
)

GEOMETRIES = {
    "3x3-pad1": ConvGeometry(2, 4, 9, 9, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "stride2-odd": ConvGeometry(3, 4, 11, 7, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),
    "dilation2": ConvGeometry(1, 4, 10, 10, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2)),
    "1x1-stride2": ConvGeometry(2, 4, 8, 8, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1)),
    "wide-40x40": ConvGeometry(1, 4, 40, 40, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),  # several pixel blocks
}


def _torch_conv(x, w, g):
    top, left, bottom, right = g.padding
    return F.conv2d(F.pad(torch.from_numpy(x), (left, right, top, bottom)), torch.from_numpy(w), stride=g.stride,
                    dilation=g.dilation).numpy()


@pytest.mark.parametrize("geom", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_basis_conv_gpu_arithmetic(geom, run_primfunc):
    rng = np.random.default_rng(0)
    map_channels = np.array([0, 0, 1, 3, 3, 3, 3], np.int32)  # channel 2 unused
    weights = rng.standard_normal((len(map_channels), geom.kernel_h, geom.kernel_w)).astype(np.float32)
    x = rng.standard_normal((geom.batch, geom.in_channels, geom.height, geom.width)).astype(np.float32)
    pixels = geom.out_height * geom.out_width
    out = run_primfunc(basis_conv_gpu_kernel(geom, len(map_channels), on_gpu=False), x, map_channels, weights,
                       np.full((geom.batch, len(map_channels), pixels), np.nan, np.float32))
    expected = np.concatenate([_torch_conv(x[:, [c]], weights[[m]][:, None], geom) for m, c in enumerate(map_channels)],
                              axis=1).reshape(out.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("density", [0.05, 1.0], ids=["5pct", "dense"])
@pytest.mark.parametrize("pixels", [1, 16, 49, 300], ids=lambda p: f"P{p}")
@pytest.mark.parametrize("epilogue", [Epilogue(), Epilogue(True, True, True)], ids=["plain", "bias-res-relu"])
def test_csr_recombine_gpu_arithmetic(density, pixels, epilogue, run_primfunc):
    rng = np.random.default_rng(pixels)
    batch, n_maps, cout = 2, 30, 19  # 19 rows: the last row block is partial
    dense = rng.standard_normal((cout, n_maps)).astype(np.float32) * (rng.random((cout, n_maps)) < density)
    dense[[0, 5]] = 0  # empty rows
    dense[1, 0] = 1.0  # at least one nonzero
    coefs = scipy.sparse.csr_matrix(dense)
    maps = rng.standard_normal((batch, n_maps, pixels)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    residual = rng.standard_normal((batch, cout, pixels)).astype(np.float32)
    args = [maps, coefs.indptr.astype(np.int32), coefs.indices.astype(np.int32), coefs.data.astype(np.float32)]
    args += ([bias] if epilogue.bias else []) + ([residual] if epilogue.residual else [])
    kernel = csr_recombine_gpu_kernel(batch, n_maps, pixels, cout, coefs.nnz, epilogue, on_gpu=False)
    out = run_primfunc(kernel, *args, np.full((batch, cout, pixels), np.nan, np.float32))
    expected = epilogue.apply_reference(np.einsum("om,nmp->nop", dense, maps), bias, residual)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("geom", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_dense_conv_gpu_arithmetic(geom, run_primfunc):
    rng = np.random.default_rng(1)
    cout = 10
    epilogue = Epilogue(True, True, True)
    x = rng.standard_normal((geom.batch, geom.in_channels, geom.height, geom.width)).astype(np.float32)
    w = rng.standard_normal((cout, geom.in_channels, geom.kernel_h, geom.kernel_w)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    pixels = geom.out_height * geom.out_width
    residual = rng.standard_normal((geom.batch, cout, pixels)).astype(np.float32)
    out = run_primfunc(dense_conv_gpu_kernel(geom, cout, epilogue, on_gpu=False), x, w.reshape(cout, -1), bias,
                       residual, np.full((geom.batch, cout, pixels), np.nan, np.float32))
    expected = epilogue.apply_reference(_torch_conv(x, w, geom).reshape(out.shape), bias, residual)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows, pixels", [(7, 1), (64, 16), (512, 16), (64, 1024), (5, 33)])
def test_tile_grid_covers_every_output_once(rows, pixels):
    grid = TileGrid(2, rows, pixels)
    assert grid.pixels_per_block % 32 == 0 and grid.rows_per_block * grid.pixels_per_block <= 256
    seen = np.zeros((2, rows, pixels), int)
    for block in range(grid.blocks):
        pb, rb, n = block % grid.pixel_blocks, block // grid.pixel_blocks % grid.row_blocks, \
            block // (grid.pixel_blocks * grid.row_blocks)
        for ty in range(grid.rows_per_block):
            for tx in range(grid.pixels_per_block):
                r, p = rb * grid.rows_per_block + ty, pb * grid.pixels_per_block + tx
                if r < rows and p < pixels:
                    seen[n, r, p] += 1
    assert (seen == 1).all()


def test_gpu_form_binds_cuda_threads():
    text = basis_conv_gpu_kernel(GEOMETRIES["3x3-pad1"], 5).script()
    assert 'T.launch_thread("blockIdx.x"' in text and 'T.launch_thread("threadIdx.x"' in text
    assert "launch_thread" not in basis_conv_gpu_kernel(GEOMETRIES["3x3-pad1"], 5, on_gpu=False).script()
