"""The PENNI-decomposed convolution, and reading its entries from a state_dict.

A PENNI layer replaces a dense k×k convolution ``W[Cout, Cin, kh, kw]`` by a basis ``B`` of ``d`` kernels
shared by the whole layer and a (usually sparse) coefficient matrix ``C``::

    W.reshape(Cout * Cin, kh * kw) = C @ B,    C: (Cout * Cin, d),  B: (d, kh * kw)

The parameter names and layouts (``basis``, ``coefs``, optional ``bias``) are those of the reference
implementation's checkpoints, so its state_dicts load as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from penni_deploy.errors import ModelLoadError, UnsupportedModelError

logger = logging.getLogger(__name__)

DEFAULT_NUM_BASES = 5
FORMS = ("two_stage", "dense")

# Attributes a pickled reference ``DecomposedConv2D`` carries that this class does not keep.
_REFERENCE_ONLY_ATTRS = ("num_basis", "device")


class PenniConv2d(nn.Module):
    """A k×k convolution factored as ``W = (coefs @ basis).view(Cout, Cin, kh, kw)``.

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output widths (groups are always 1).
    kernel_size, stride, padding, dilation : int or tuple of int
        As for :class:`torch.nn.Conv2d`; padding is zero padding given as numbers.
    num_bases : int
        ``d``, the number of basis kernels shared by the layer.
    bias : bool
        Whether the layer has a ``(Cout,)`` bias.

    Attributes
    ----------
    basis : nn.Parameter
        ``(d, kh * kw)``, one basis kernel per row.
    coefs : nn.Parameter
        ``(Cout * Cin, d)``; row ``o * Cin + i`` holds the coefficients of kernel ``(o, i)``.
    form : str
        ``"two_stage"`` (default): a grouped basis convolution then a 1×1 recombination, the inference form
        the compiler lowers. ``"dense"``: rebuild ``W`` and call one conv2d, as the reference does; its
        traced graph shows a dense conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        num_bases: int = DEFAULT_NUM_BASES,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        kh, kw = self.kernel_size
        self.basis = nn.Parameter(torch.empty(num_bases, kh * kw))
        self.coefs = nn.Parameter(torch.empty(self.out_channels * self.in_channels, num_bases))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels))
        else:
            self.register_parameter("bias", None)
        self.form = "two_stage"
        self.reset_parameters()

    @property
    def form(self) -> str:
        """Which computation ``forward`` runs: one of :data:`FORMS`."""
        return self._form

    @form.setter
    def form(self, value: str) -> None:
        if value not in FORMS:
            raise ValueError(f"PenniConv2d.form must be one of {FORMS}, got {value!r}")
        self._form = value

    @property
    def num_bases(self) -> int:
        """``d``, read from the basis so that it can never disagree with it."""
        return self.basis.shape[0]

    def reset_parameters(self) -> None:
        """Orthonormal basis rows and Kaiming-like coefficients (the dense kernel keeps He variance)."""
        d, kk = self.basis.shape
        with torch.no_grad():
            if 0 < d <= kk:
                q, _ = torch.linalg.qr(torch.randn(kk, kk))  # q: (kk, kk) orthogonal
                self.basis.copy_(q.T[:d])
            else:  # d = 0, or more bases than kernel entries: they cannot be orthonormal
                self.basis.normal_(0.0, kk**-0.5)
            # With orthonormal B, |w_oi|^2 = |c_oi|^2; He wants E|w_oi|^2 = 2 / Cin.
            std = (2.0 / max(1, self.in_channels * d)) ** 0.5
            self.coefs.normal_(0.0, std)
            if self.bias is not None:
                self.bias.zero_()

    def dense_weight(self) -> torch.Tensor:
        """Return the effective dense weight ``(Cout, Cin, kh, kw)``."""
        kh, kw = self.kernel_size
        # (Cout*Cin, d) @ (d, kh*kw) -> (Cout*Cin, kh*kw) -> (Cout, Cin, kh, kw), row-major
        return (self.coefs @ self.basis).reshape(self.out_channels, self.in_channels, kh, kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin, cout, d = self.in_channels, self.out_channels, self.num_bases
        # With no basis left (d = 0, a fully pruned layer) there is no stage 1 to run: W is all zeros.
        # jit.trace sees shapes as tensors and would warn on the test, so it is skipped there.
        if self.form == "dense" or (not torch.jit.is_tracing() and d == 0):
            return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation)
        kh, kw = self.kernel_size
        # (d, kh*kw) -> (Cin*d, 1, kh, kw): output channel i*d + r convolves input i with basis row r
        w1 = self.basis.reshape(d, 1, kh, kw).repeat(cin, 1, 1, 1)
        mid = F.conv2d(x, w1, None, self.stride, self.padding, self.dilation, groups=cin)
        # (Cout*Cin, d) -> (Cout, Cin*d, 1, 1): element (o*Cin + i, r) lands on input channel i*d + r
        w2 = self.coefs.reshape(cout, cin * d, 1, 1)
        return F.conv2d(mid, w2, self.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, num_bases: int = DEFAULT_NUM_BASES) -> PenniConv2d:
        """Factor a dense convolution by truncated SVD (the best rank-``d`` approximation).

        Parameters
        ----------
        conv : nn.Conv2d
            A zero-padded convolution with groups 1 and numeric padding.
        num_bases : int
            ``d``; clipped to ``kh * kw`` and to ``Cout * Cin``, beyond which extra bases add nothing.

        Returns
        -------
        PenniConv2d
            Same geometry and bias; exact when the kernel matrix has rank ``<= d``.

        Note
        ----
        The SVD is uncentred, unlike the reference's PCA, whose dropped mean makes its start worse.
        """
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UnsupportedModelError(
                f"cannot decompose {conv}: only groups=1, zero padding given as numbers is supported"
            )
        cout, cin, kh, kw = conv.weight.shape
        d = max(1, min(int(num_bases), kh * kw, cout * cin))
        if d != num_bases:
            logger.info("from_conv: clipped num_bases %d to %d for a %dx%d kernel", num_bases, d, kh, kw)
        layer = cls(cin, cout, (kh, kw), conv.stride, conv.padding, conv.dilation, d, conv.bias is not None)
        # float64 so that rank-d kernels come back exact to float32 rounding
        mat = conv.weight.detach().to(torch.float64).reshape(cout * cin, kh * kw)
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        with torch.no_grad():
            layer.basis.copy_(vh[:d])  # (d, kh*kw)
            layer.coefs.copy_(u[:, :d] * s[:d])  # (Cout*Cin, d)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def coefficient_density(self) -> float:
        """Fraction of non-zero coefficients (0.0 for an empty layer)."""
        n = self.coefs.numel()
        return float((self.coefs != 0).sum().item()) / n if n else 0.0

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, num_bases={self.num_bases}, "
            f"bias={self.bias is not None}, form={self.form!r}"
        )

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "num_basis" in state:
            self._adopt_reference_state()

    def _adopt_reference_state(self) -> None:
        """Translate the attributes of an unpickled reference ``DecomposedConv2D`` into this class's.

        The reference keeps ``num_basis`` and ``device`` as attributes, geometry as given to it (a list
        or tuple kernel size), and a missing bias as a plain ``None`` attribute. It computes the dense form.
        """
        state = self.__dict__
        num_basis = state.get("num_basis")
        for name in _REFERENCE_ONLY_ATTRS:
            state.pop(name, None)
        if "bias" in state:  # a plain attribute, not a registered parameter
            bias = state.pop("bias")
            self.register_parameter("bias", bias if isinstance(bias, nn.Parameter) else None)
        for name in ("kernel_size", "stride", "padding", "dilation"):
            value = state.get(name)
            state[name] = tuple(value) if isinstance(value, (list, tuple)) else _pair(value)
        self._form = "dense"
        basis, coefs = self._parameters.get("basis"), self._parameters.get("coefs")
        if basis is None or coefs is None:
            raise ModelLoadError("a pickled DecomposedConv2D has no basis or coefs parameter")
        kh, kw = self.kernel_size
        expected_coefs = (self.out_channels * self.in_channels, basis.shape[0])
        if tuple(basis.shape) != (basis.shape[0], kh * kw) or tuple(coefs.shape) != expected_coefs:
            raise ModelLoadError(
                f"a pickled DecomposedConv2D ({self.in_channels}->{self.out_channels}, kernel {kh}x{kw}) has "
                f"basis {tuple(basis.shape)} and coefs {tuple(coefs.shape)}; expected coefs {expected_coefs}"
            )
        if num_basis is not None and num_basis != basis.shape[0]:
            logger.warning("pickled DecomposedConv2D says num_basis=%s but its basis has %d rows; using the basis",
                           num_basis, basis.shape[0])


def make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    *,
    penni: bool,
    num_bases: int = DEFAULT_NUM_BASES,
    bias: bool = False,
) -> nn.Module:
    """Return a conv: a :class:`PenniConv2d` when ``penni`` and ``kernel_size > 1``, else a dense one.

    1×1 convolutions are never decomposed (one basis kernel would be all they need).
    """
    if penni and kernel_size > 1:
        return PenniConv2d(in_channels, out_channels, kernel_size, stride, padding, num_bases=num_bases, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)


def biased_convs(state_dict: Mapping[str, torch.Tensor], paths: Iterable[str]) -> frozenset[str]:
    """The conv paths among ``paths`` whose checkpoint entries include a bias (the reference has none)."""
    return frozenset(p for p in paths if f"{p}.bias" in state_dict)


def bases_for(num_bases: int | Mapping[str, int], path: str) -> int:
    """``d`` for the conv at module path ``path``: an int applies everywhere; a mapping defaults to 5."""
    if isinstance(num_bases, Mapping):
        return int(num_bases.get(path, DEFAULT_NUM_BASES))
    return int(num_bases)


# --- reading a state_dict --------------------------------------------------------------------------------


def entry_shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    """Shape of ``state_dict[key]``, or a ModelLoadError naming the missing key."""
    try:
        return tuple(state_dict[key].shape)
    except KeyError:
        raise ModelLoadError(f"state_dict has no entry {key!r}; is this checkpoint for this architecture?") from None
    except AttributeError:
        raise ModelLoadError(f"state_dict entry {key!r} is not a tensor") from None


def width_of(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Width of the BatchNorm (or number of outputs of the layer) at module path ``prefix``."""
    return entry_shape(state_dict, f"{prefix}.weight")[0]


def conv_bases(state_dict: Mapping[str, torch.Tensor], path: str, penni: bool) -> int:
    """``d`` of the PENNI conv at ``path`` (``basis.shape[0]``); the default for dense checkpoints."""
    if not penni:
        return DEFAULT_NUM_BASES
    if f"{path}.basis" not in state_dict and f"{path}.weight" in state_dict:
        raise ModelLoadError(
            f"state_dict has a dense {path + '.weight'!r} where a PENNI layer ({path}.basis, {path}.coefs) was "
            "expected: build it with penni=False"
        )
    return entry_shape(state_dict, f"{path}.basis")[0]


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load ``state_dict`` strictly, turning any mismatch into a ModelLoadError that names the key.

    A missing ``num_batches_tracked`` is tolerated (BatchNorm fills it in), as PyTorch does.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise ModelLoadError(
            f"state_dict does not fit {type(model).__name__}: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    for key, value in state_dict.items():
        found = tuple(getattr(value, "shape", ()))
        if not isinstance(value, torch.Tensor) or found != tuple(expected[key].shape):
            raise ModelLoadError(
                f"state_dict entry {key!r} has shape {found}, expected {tuple(expected[key].shape)} "
                f"for {type(model).__name__}"
            )
    # A copy: BatchNorm's loader may add num_batches_tracked to the dict it is given.
    model.load_state_dict(dict(state_dict), strict=True)
    return model
