"""The math behind ``FactorLowRankConv``: factor a k×k kernel into d shared bases + coefficients.

A PENNI layer trained by the reference implementation is traced as a dense conv whose kernel
matrix ``K`` ((Cout·Cin) × k², row o·Cin+i) equals ``C @ B`` with ``B`` d × k². Any rank-d
factorization is exact, but only one keeps the pruned coefficients sparse: ``C' = C R`` for an
invertible ``R`` mixes the zeros away. Pruned PENNI layers have many kernels that use a single
basis, i.e. rows of ``K`` parallel to a basis vector; those directions are recovered first, and a
truncated SVD (exact but dense ``C``) is the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KernelFactors:
    """``kernel_matrix ≈ coefs @ basis`` with ``basis`` (d, k²) and ``coefs`` (rows, d), float32."""

    basis: np.ndarray
    coefs: np.ndarray
    max_abs_error: float  # of the reconstruction, relative to max |K|

    @property
    def num_bases(self) -> int:
        return self.basis.shape[0]


def factor_kernel_matrix(kernel: np.ndarray, max_bases: int, rtol: float = 1e-5) -> KernelFactors | None:
    """Factor ``kernel`` (rows × k²) exactly with at most ``max_bases`` bases, or None.

    Accepts only when every entry is reproduced within ``rtol · max|kernel|`` and the rank is below
    k² (otherwise factoring saves nothing), so a genuinely dense conv is left alone.
    """
    k64 = kernel.astype(np.float64)
    scale = float(np.abs(k64).max()) if k64.size else 0.0
    taps = k64.shape[1]
    if scale == 0.0:  # an all-zero layer: one arbitrary basis, no coefficients
        basis = np.zeros((1, taps), np.float32)
        basis[0, 0] = 1.0
        return KernelFactors(basis, np.zeros((k64.shape[0], 1), np.float32), 0.0)

    _, sing, vt = np.linalg.svd(k64, full_matrices=False)
    rank = int(np.sum(sing > sing[0] * rtol * 1e-2))
    if rank > max_bases or rank >= taps:
        return None

    candidates = [_svd_factors(k64, vt[:rank])]
    sparse_basis = _parallel_row_basis(k64, rank)
    if sparse_basis is not None:
        candidates.append(_coefficients_for(k64, sparse_basis))
    exact = []
    for basis, coefs in candidates:
        # Judged as deployed, in float32: an ill-conditioned basis (three near-parallel kernels) is
        # exact in float64 yet its large coefficients lose the product to float32 rounding.
        basis32, coefs32 = basis.astype(np.float32), coefs.astype(np.float32)
        error = float(np.abs(coefs32.astype(np.float64) @ basis32.astype(np.float64) - k64).max()) / scale
        if error <= rtol:
            exact.append(KernelFactors(basis32, coefs32, error))
    # Of the exact factorizations, the one with the sparsest coefficients.
    return min(exact, key=lambda f: int(np.count_nonzero(f.coefs)), default=None)


def _svd_factors(k64: np.ndarray, vt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # vt: (rank, k²) orthonormal rows, so the coefficients are a plain projection.
    return vt, k64 @ vt.T


def _parallel_row_basis(k64: np.ndarray, rank: int) -> np.ndarray | None:
    """Up to ``rank`` independent unit directions shared by the most rows of ``k64``, or None."""
    norms = np.linalg.norm(k64, axis=1)
    live = norms > norms.max() * 1e-6
    if not live.any():
        return None
    units = k64[live] / norms[live, None]
    # Canonical sign: the largest-magnitude entry positive, so u and -u group together.
    pivot = np.abs(units).argmax(axis=1)
    units *= np.sign(units[np.arange(len(units)), pivot])[:, None]
    keys, inverse, counts = np.unique(np.round(units, 5), axis=0, return_inverse=True, return_counts=True)
    chosen: list[np.ndarray] = []
    # Most-shared directions first; on small layers a basis may be used by a single kernel alone.
    for group in np.argsort(-counts, kind="stable"):
        direction = units[np.flatnonzero(inverse.ravel() == group)[0]]
        trial = np.stack(chosen + [direction])
        if np.linalg.matrix_rank(trial, tol=1e-6) == len(trial):
            chosen.append(direction)
        if len(chosen) == rank:
            return np.stack(chosen)
    return None


def _coefficients_for(k64: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    coefs = np.linalg.lstsq(basis.T, k64.T, rcond=None)[0].T  # (rows, d)
    # Round-off of exact zeros; anything this small is far below float32 resolution of the kernel.
    coefs[np.abs(coefs) < np.abs(coefs).max() * 1e-6] = 0.0
    return basis, coefs
