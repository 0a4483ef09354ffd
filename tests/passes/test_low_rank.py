"""low_rank.factor_kernel_matrix: exact rank-d factorization of a kernel matrix, keeping sparse coefficients."""

import numpy as np
import pytest

from penni_deploy.models.penni_conv import PenniConv2d
from penni_deploy.models.random_weights import randomize_penni_weights_
from penni_deploy.passes.low_rank import factor_kernel_matrix

TAPS = 9  # 3×3 kernels


def _rank_r(rows: int, rank: int, seed: int, taps: int = TAPS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, taps))).astype(np.float32)


def _penni_matrices(cin: int, cout: int, density: float, seed: int):
    """(kernel matrix as torch computes it in float32, original coefficients) of a seeded PENNI layer."""
    layer = randomize_penni_weights_(PenniConv2d(cin, cout, 3, padding=1, num_bases=5), density, seed)
    kernel = layer.dense_weight().detach().numpy().reshape(cout * cin, TAPS)
    return kernel, layer.coefs.detach().numpy()


def _assert_reconstructs(factors, kernel, rtol=1e-5):
    assert factors.basis.dtype == np.float32 and factors.coefs.dtype == np.float32
    assert factors.basis.shape == (factors.num_bases, kernel.shape[1])
    assert factors.coefs.shape == (kernel.shape[0], factors.num_bases)
    error = np.abs(factors.coefs.astype(np.float64) @ factors.basis - kernel).max() / np.abs(kernel).max()
    assert error <= rtol
    assert factors.max_abs_error <= rtol


@pytest.mark.parametrize("rank", [1, 2, 3, 4, 5], ids=lambda r: f"rank{r}")
def test_rank_r_kernel_factors_exactly_with_r_bases(rank):
    kernel = _rank_r(64, rank, seed=rank)

    factors = factor_kernel_matrix(kernel, max_bases=5)

    assert factors is not None and factors.num_bases == rank
    _assert_reconstructs(factors, kernel)


@pytest.mark.parametrize("density", [0.03, 0.1], ids=["3pct", "10pct"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_penni_coefficients_stay_sparse(density, seed):
    kernel, coefs = _penni_matrices(64, 64, density, seed)

    factors = factor_kernel_matrix(kernel, max_bases=5)

    assert factors is not None
    _assert_reconstructs(factors, kernel)
    assert np.count_nonzero(factors.coefs) == np.count_nonzero(coefs)
    # Kernel by kernel, the same number of bases is used: the recovered bases are the originals up to
    # order and scale, not mixtures of them.
    np.testing.assert_array_equal(np.count_nonzero(factors.coefs, axis=1), np.count_nonzero(coefs, axis=1))


@pytest.mark.parametrize("cin_cout", [(16, 16), (128, 128)], ids=["16x16", "128x128"])
def test_float32_rounded_penni_kernel_is_recognized(cin_cout):
    """W = C·B rounded to float32 (as a traced model stores it) still has numerical rank d."""
    kernel, _ = _penni_matrices(*cin_cout, density=1.0, seed=0)

    factors = factor_kernel_matrix(kernel, max_bases=5)

    assert factors is not None and factors.num_bases == 5
    _assert_reconstructs(factors, kernel)


def test_full_rank_kernel_is_refused():
    kernel = np.random.default_rng(0).standard_normal((64, TAPS)).astype(np.float32)

    assert factor_kernel_matrix(kernel, max_bases=5) is None


@pytest.mark.parametrize(("rank", "max_bases"), [(6, 5), (3, 2)], ids=["rank6_max5", "rank3_max2"])
def test_rank_above_max_bases_is_refused(rank, max_bases):
    assert factor_kernel_matrix(_rank_r(64, rank, seed=0), max_bases=max_bases) is None


def test_rank_equal_to_taps_saves_nothing_and_is_refused():
    kernel = _rank_r(64, 4, seed=0, taps=4)  # a 2×2 kernel of full rank 4

    assert factor_kernel_matrix(kernel, max_bases=5) is None


def test_noise_above_tolerance_is_refused():
    kernel = _rank_r(64, 2, seed=0)
    noisy = kernel + 1e-3 * np.abs(kernel).max() * np.random.default_rng(1).standard_normal(kernel.shape)

    assert factor_kernel_matrix(noisy.astype(np.float32), max_bases=5) is None


def test_all_zero_kernel_has_one_basis_and_no_coefficients():
    factors = factor_kernel_matrix(np.zeros((64, TAPS), np.float32), max_bases=5)

    assert factors is not None and factors.num_bases == 1
    assert factors.coefs.shape == (64, 1) and not factors.coefs.any()
    assert factors.max_abs_error == 0.0


def test_basis_used_by_a_single_kernel_keeps_coefficients_sparse():
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((5, TAPS))
    coefs = np.zeros((64, 5))
    for r in range(4):  # bases 0-3: three kernels each use one of them alone
        coefs[3 * r:3 * r + 3, r] = rng.standard_normal(3)
    coefs[60, 4] = 1.5  # basis 4: one kernel only
    kernel = (coefs @ basis).astype(np.float32)

    factors = factor_kernel_matrix(kernel, max_bases=5)

    assert factors is not None
    assert np.count_nonzero(factors.coefs) == np.count_nonzero(coefs)


def test_near_parallel_kernels_do_not_become_an_ill_conditioned_basis():
    # The three most shared kernel directions are a hair apart: as a basis they are exact in float64,
    # but every other kernel then needs coefficients ~2e3 whose float32 rounding breaks the tolerance.
    rng = np.random.default_rng(0)
    u, v, w = rng.standard_normal((3, TAPS))
    near = np.repeat(np.stack([u, u + 3e-3 * v, u + 3e-3 * w]), 8, axis=0)  # each shared by 8 kernels
    others = rng.standard_normal((40, 3)) @ np.stack([u, v, w])
    kernel = np.concatenate([near, others]).astype(np.float32)

    factors = factor_kernel_matrix(kernel, max_bases=5)

    assert factors is not None and factors.num_bases == 3
    _assert_reconstructs(factors, kernel)
