import numpy as np
import pytest
import scipy.sparse
import torch

from penni_deploy.kernels.cpu import csr_recombine_kernel
from penni_deploy.plan import Epilogue
from penni_deploy.kernels.reference import csr_recombine_reference

EPILOGUES = {
    "none": Epilogue(),
    "bias": Epilogue(bias=True),
    "bias-relu": Epilogue(bias=True, relu=True),
    "bias-res-relu": Epilogue(bias=True, residual=True, relu=True),
    "res": Epilogue(residual=True),
}


def random_csr(rows, cols, density, rng, empty_rows=()):
    dense = rng.standard_normal((rows, cols)).astype(np.float32) * (rng.random((rows, cols)) < density)
    dense[list(empty_rows)] = 0
    return scipy.sparse.csr_matrix(dense)


@pytest.mark.parametrize("epilogue", EPILOGUES.values(), ids=EPILOGUES.keys())
@pytest.mark.parametrize("pixels", [1, 49, 64, 225, 1024], ids=lambda p: f"P{p}")
@pytest.mark.parametrize("density", [0.03, 1.0], ids=["3pct", "dense"])
def test_csr_recombine_matches_torch(epilogue, pixels, density, run_primfunc):
    rng = np.random.default_rng(pixels)
    batch, n_maps, cout = 2, 40, 12
    coefs = random_csr(cout, n_maps, density, rng, empty_rows=(0, 7))
    if coefs.nnz == 0:  # the kernel is only generated for layers with work to do
        coefs = random_csr(cout, n_maps, 1.0, rng, empty_rows=(0, 7))
    maps = rng.standard_normal((batch, n_maps, pixels)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    residual = rng.standard_normal((batch, cout, pixels)).astype(np.float32)

    func = csr_recombine_kernel(batch, n_maps, pixels, cout, coefs.nnz, epilogue)
    args = [maps, coefs.indptr.astype(np.int32), coefs.indices.astype(np.int32), coefs.data.astype(np.float32)]
    args += [bias] if epilogue.bias else []
    args += [residual] if epilogue.residual else []
    out = run_primfunc(func, *args, np.full((batch, cout, pixels), np.nan, np.float32))

    expected = torch.einsum("om,nmp->nop", torch.from_numpy(coefs.toarray()), torch.from_numpy(maps))
    if epilogue.bias:
        expected = expected + torch.from_numpy(bias)[None, :, None]
    if epilogue.residual:
        expected = expected + torch.from_numpy(residual)
    if epilogue.relu:
        expected = torch.relu(expected)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(csr_recombine_reference(maps, coefs, epilogue, bias, residual), expected.numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pixels", [1, 4, 16, 20, 33], ids=lambda p: f"P{p}")
def test_narrow_blocks_split_rows_over_chains_exactly(pixels, run_primfunc):
    """Blocks narrower than four vectors split each row over several partial sums; rows of every
    length 0..13 cover each remainder of that split, in CSR and in ELL (padded, fully unrolled)."""
    from penni_deploy.kernels.cpu.csr_recombine import chains_for, ell_arrays, ell_recombine_kernel

    assert chains_for(min(pixels, 64), 16) == (4 if pixels <= 16 else 2 if pixels <= 32 else 1)
    rng = np.random.default_rng(pixels)
    n_maps, cout = 30, 14
    dense = np.zeros((cout, n_maps), np.float32)
    for row in range(cout):  # row `row` has exactly `row` nonzeros
        dense[row, rng.choice(n_maps, row, replace=False)] = rng.standard_normal(row)
    coefs = scipy.sparse.csr_matrix(dense)
    maps = rng.standard_normal((2, n_maps, pixels)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    expected = np.einsum("om,nmp->nop", dense, maps) + bias[None, :, None]
    epilogue = Epilogue(bias=True)

    for offsets in (False, True):  # map indices, or offsets premultiplied by the pixels
        csr_func = csr_recombine_kernel(2, n_maps, pixels, cout, coefs.nnz, epilogue, offsets=offsets)
        indices = coefs.indices.astype(np.int32) * (pixels if offsets else 1)
        out = run_primfunc(csr_func, maps, coefs.indptr.astype(np.int32), indices,
                           coefs.data.astype(np.float32), bias, np.full((2, cout, pixels), np.nan, np.float32))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)

    indices, data, width = ell_arrays(coefs)
    ell_func = ell_recombine_kernel(2, n_maps, pixels, cout, width, epilogue)
    out = run_primfunc(ell_func, maps, indices, data, bias, np.full((2, cout, pixels), np.nan, np.float32))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [7, 64, 512])
def test_balanced_order_gives_every_contiguous_range_about_the_same_nonzeros(rows):
    from penni_deploy.kernels.cpu.csr_recombine import balanced_row_order

    rng = np.random.default_rng(rows)
    lengths = rng.poisson(80, rows) * (rng.random(rows) < 0.9)  # uneven rows, some empty
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    order = balanced_row_order(indptr)
    assert sorted(order.tolist()) == list(range(rows)) and order.dtype == np.int32
    for threads in (2, 4, 8):
        if rows < 2 * threads:
            continue
        step = -(-rows // threads)  # TVM's static split of a parallel loop
        shares = [lengths[order[t * step:(t + 1) * step]].sum() for t in range(threads)]
        longest_first = [np.sort(lengths)[::-1][t * step:(t + 1) * step].sum() for t in range(threads)]
        assert max(shares) / np.mean(shares) < 1.1 + 4 / step
        assert max(shares) < max(longest_first)
