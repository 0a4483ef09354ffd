"""Count multiply-accumulates (MACs) and parameters of a model, PENNI layers in their two-stage form.

Why not the reference's counter: it miscounts 1×1 convs (ResNet50: 121.5G instead of 4.09G MACs) and counts a
Linear layer as 2·MACs. This one runs one forward pass with hooks and counts, per image:

- ``nn.Conv2d``: ``Ho·Wo · Cout · (Cin / groups) · kh · kw`` (1×1 and grouped convs included);
- ``nn.Linear``: ``in · out`` per output row (one row per image for a classifier), MACs, not 2·MACs;
- :class:`PenniConv2d`: the two-stage inference form the compiler lowers, ``Ho·Wo · (Cin·d·kh·kw + nnz(C))``
  (basis convolution, then recombination with the non-zero coefficients), whatever its ``form`` attribute
  says. Its dense-equivalent ``Ho·Wo · Cout · Cin · kh · kw`` is reported beside it.

BatchNorm, ReLU, pooling, the residual additions and biases are not counted: they are not MACs (a BatchNorm
in eval mode also folds into the conv before it). Stage 1 is counted for every (input channel, basis) pair,
including pairs that no output uses; the compiler may skip those, so the count is an upper bound for it.

Parameters are the stored ones (``model.parameters()``, BatchNorm affine included, running statistics
excluded). "Effective" parameters count a PENNI layer as ``d·kh·kw + nnz(C)`` (+ bias): its zero
coefficients need not be stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from penni_deploy.errors import InputSpecError
from penni_deploy.models.penni_conv import PenniConv2d

logger = logging.getLogger(__name__)

# Layers that own parameters but perform no MACs (a per-channel scale and shift).
_NO_MAC_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


@dataclass(frozen=True)
class LayerCount:
    """The count of one call of one counted layer, per image.

    Attributes
    ----------
    name : str
        Module path (``""`` for the model itself).
    kind : str
        ``"conv"``, ``"linear"`` or ``"penni"``.
    output_shape : tuple of int
        Output shape without the batch dimension.
    macs : int
        MACs as deployed (two-stage for a PENNI layer).
    dense_macs : int
        MACs of the dense layer it stands for (equal to ``macs`` for conv and linear).
    params : int
        Stored parameters of the layer.
    effective_params : int
        Parameters that must be stored (a PENNI layer's zero coefficients excluded).
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    macs: int
    dense_macs: int
    params: int
    effective_params: int


@dataclass(frozen=True)
class ModelCount:
    """MACs and parameters of a model for one image; see the module docstring for what is counted.

    Attributes
    ----------
    input_shape : tuple of int
        The shape of the forward pass (its first dimension is the batch, divided out of every MAC count).
    layers : tuple of LayerCount
        One entry per call of a conv, linear or PENNI layer, in execution order.
    params, effective_params : int
        Whole-model stored and effective parameters (each shared parameter once).
    coef_nnz, coef_total : int
        Non-zero and total PENNI coefficients of the model.
    uncounted : tuple of str
        Paths of modules that own parameters but whose MACs this counter does not know (e.g. ``nn.Conv1d``);
        their parameters are in ``params``, their MACs in no total.
    """

    input_shape: tuple[int, ...]
    layers: tuple[LayerCount, ...]
    params: int
    effective_params: int
    coef_nnz: int
    coef_total: int
    uncounted: tuple[str, ...] = ()

    @property
    def macs(self) -> int:
        """Total MACs per image, PENNI layers in two-stage form."""
        return sum(layer.macs for layer in self.layers)

    @property
    def dense_macs(self) -> int:
        """Total MACs per image with every PENNI layer replaced by its dense equivalent."""
        return sum(layer.dense_macs for layer in self.layers)

    @property
    def coef_density(self) -> float | None:
        """``coef_nnz / coef_total``, or None for a model without PENNI layers."""
        return self.coef_nnz / self.coef_total if self.coef_total else None

    def macs_of(self, kind: str) -> int:
        """Total MACs per image of the layers of one ``kind`` (``"conv"``, ``"linear"``, ``"penni"``)."""
        return sum(layer.macs for layer in self.layers if layer.kind == kind)


def count_model(model: nn.Module, input_shape: Sequence[int]) -> ModelCount:
    """Count MACs (one forward pass on zeros, with hooks) and parameters of ``model``.

    Parameters
    ----------
    model : nn.Module
        Any model; the counted layers are ``nn.Conv2d``, ``nn.Linear`` and :class:`PenniConv2d`.
    input_shape : sequence of int
        Shape of the single input, batch first. Counts are per image whatever the batch.

    Returns
    -------
    ModelCount
        Per-layer and whole-model counts.

    Raises
    ------
    InputSpecError
        ``input_shape`` is not a batched shape of positive sizes, or the model cannot run on it.

    Note
    ----
    The pass runs in eval mode under ``no_grad``, so BatchNorm statistics are left alone; each module's
    training flag is restored afterwards.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2 or min(shape) < 1:
        raise InputSpecError(f"count_model needs a batched input shape of positive sizes, got {shape}")
    batch = shape[0]
    names = {module: name for name, module in model.named_modules()}
    layers: list[LayerCount] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        layers.append(_layer_count(names[module], module, output, batch))

    handles = [m.register_forward_hook(hook) for m in names if isinstance(m, (nn.Conv2d, nn.Linear, PenniConv2d))]
    training = {m: m.training for m in names}
    reference = next(model.parameters(), None)
    if reference is None:
        reference = next(model.buffers(), torch.zeros(()))
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, dtype=reference.dtype, device=reference.device))
    except (RuntimeError, ValueError, IndexError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputSpecError(f"{type(model).__name__} cannot run on an input of shape {shape}: {first_line}") from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.training = flag

    penni = [m for m in names if isinstance(m, PenniConv2d)]
    coef_nnz = sum(int(torch.count_nonzero(m.coefs)) for m in penni)
    coef_total = sum(m.coefs.numel() for m in penni)
    params = sum(p.numel() for p in model.parameters())
    uncounted = tuple(_uncounted(names))
    if uncounted:
        logger.warning("count_model: MACs of %d module(s) not counted (unknown layer types): %s",
                       len(uncounted), ", ".join(uncounted))
    return ModelCount(
        input_shape=shape,
        layers=tuple(layers),
        params=params,
        effective_params=params - (coef_total - coef_nnz),  # zero coefficients are not stored
        coef_nnz=coef_nnz,
        coef_total=coef_total,
        uncounted=uncounted,
    )


def coefficient_density(model: nn.Module) -> float | None:
    """Fraction of non-zero coefficients over all :class:`PenniConv2d` layers; None if there are none."""
    coefs = [m.coefs for m in model.modules() if isinstance(m, PenniConv2d)]
    total = sum(c.numel() for c in coefs)
    return sum(int(torch.count_nonzero(c)) for c in coefs) / total if total else None


def format_count(count: ModelCount) -> str:
    """One line, e.g. ``params 0.27M (effective 0.03M), MACs 3.21M (dense 40.6M), coef density 3.1%``."""
    params = f"params {_millions(count.params)}"
    macs = f"MACs {_macs(count.macs)}"
    density = count.coef_density
    if density is None:
        text = f"{params}, {macs}, no PENNI layers"
    else:
        text = (f"{params} (effective {_millions(count.effective_params)}), {macs} "
                f"(dense {_macs(count.dense_macs)}), coef density {100 * density:.1f}%")
    if count.uncounted:
        text += f", MACs of {len(count.uncounted)} module(s) not counted"
    return text


def _millions(n: int) -> str:
    # "0.27M", "0.03M" below a million (as parameter counts are usually quoted), else "11.2M".
    return f"{n / 1e6:.2f}M" if n < 1e6 else f"{n / 1e6:.3g}M"


def _macs(n: int) -> str:
    # Three significant digits, in G from a billion on: "40.6M", "4.09G".
    return f"{n / 1e9:.3g}G" if n >= 1e9 else f"{n / 1e6:.3g}M"


def _layer_count(name: str, module: nn.Module, output: torch.Tensor, batch: int) -> LayerCount:
    out_shape = tuple(output.shape[1:])
    per_image = output.numel() // batch  # output elements of one image
    params = sum(p.numel() for p in module.parameters())
    if isinstance(module, PenniConv2d):
        kh, kw = module.kernel_size
        cin, cout, d = module.in_channels, module.out_channels, module.num_bases
        nnz = int(torch.count_nonzero(module.coefs))
        pixels = per_image // cout  # Ho·Wo
        macs = pixels * (cin * d * kh * kw + nnz)  # stage 1: basis conv; stage 2: sparse recombination
        dense = pixels * cout * cin * kh * kw
        return LayerCount(name, "penni", out_shape, macs, dense, params, params - (module.coefs.numel() - nnz))
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        macs = per_image * (module.in_channels // module.groups) * kh * kw  # per_image = Ho·Wo·Cout
        return LayerCount(name, "conv", out_shape, macs, macs, params, params)
    macs = per_image * module.in_features  # per_image = rows · out_features
    return LayerCount(name, "linear", out_shape, macs, macs, params, params)


def _uncounted(names: dict[nn.Module, str]) -> list[str]:
    counted = (nn.Conv2d, nn.Linear, PenniConv2d, *_NO_MAC_TYPES)
    return [
        name or type(module).__name__
        for module, name in names.items()
        if not isinstance(module, counted) and next(module.parameters(recurse=False), None) is not None
    ]
