"""How one PENNI layer is computed: the knobs of its kernels, chosen per layer.

A ``KernelConfig`` names one point of the search space that ``penni-deploy tune`` measures on the
layer's real arrays, and that the cost model picks from when there is no tuning database. Every
config computes exactly the same result; they differ in speed and memory only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: The two exact evaluation orders of a PENNI layer.
ORDERS = ("basis_first", "coef_first")
#: Storage of the coefficient matrix inside the recombination kernel.
FORMATS = ("csr", "ell", "unrolled")


@dataclass(frozen=True)
class KernelConfig:
    """One way to compute a PENNI layer.

    Parameters
    ----------
    order : str
        ``basis_first``: maps ``M[i,r] = X[i] ⋆ B[r]`` (only the used ones), then ``Y = C·M`` at the
        output resolution. ``coef_first``: ``U[o,r] = Σ_i C[o,i,r]·X[i]`` at the input resolution,
        then ``Y[o] = Σ_r U[o,r] ⋆ B[r]``. Which is cheaper depends on stride, Cin, Cout and density.
    fused : bool
        basis-first only: compute the maps of a tile of output rows into a per-thread buffer and
        recombine them at once, so the ``n_maps × pixels`` map tensor is never materialized.
    format : str
        ``csr`` (data-dependent loop over each row's nonzeros), ``ell`` (rows padded to the longest
        with zeros: fixed trip counts) or ``unrolled`` (code specialized to the pattern: indices and
        values become immediates, no index arrays at all).
    block : int
        Pixels kept in registers per recombination step, in vector registers (1, 2 or 4).
    balance : bool
        Hand out output rows long and short alternately instead of in channel order, so that each
        thread's contiguous range of rows has about the same nonzeros.
    tile_rows : int
        Fused only: output rows per task.
    """

    order: str = "basis_first"
    fused: bool = False
    format: str = "csr"
    block: int = 4
    balance: bool = False
    tile_rows: int = 4

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, not {self.order!r}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, not {self.format!r}")
        if self.fused and self.order != "basis_first":
            raise ValueError("only the basis-first order can be fused")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> KernelConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def describe(self) -> str:
        """Short tag for reports: ``basis_first/csr/b4``, ``coef_first/unrolled/b2/bal``, ..."""
        parts = [self.order + ("+fused" if self.fused else ""), self.format, f"b{self.block}"]
        if self.fused:
            parts.append(f"t{self.tile_rows}")
        if self.balance:
            parts.append("bal")
        return "/".join(parts)


DEFAULT_CONFIG = KernelConfig()
