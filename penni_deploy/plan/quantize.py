"""int8 quantization, as plain NumPy: activation ranges, scales, weight quantization.

``compile --precision int8`` quantizes each conv it runs in int8 like this:

- weights symmetric per output channel: ``w_q = clamp(rint(w / s_w[o]), -127, 127)``,
  ``s_w[o] = max |w[o]| / 127``;
- the layer's input per tensor, from a calibrated range: ``x_q = clamp(rint(x / s_x + zp), 0, 255)``
  as unsigned bytes (what ``vpdpbusd`` reads). An input that is never negative (after a ReLU) uses
  all 256 levels, ``zp = 0``, ``s_x = max / 255``; a signed one ``zp = 128``, ``s_x = max |x| / 127``;
- the output ``y = (Σ w_q·x_q − zp·Σ w_q) · s_x·s_w[o] + bias`` in float32; where the next layer
  is an int8 conv too, the epilogue also writes it quantized as that layer's input, in channel-quad
  words (``Int8Handoff``), and the next layer reads those instead of quantizing again.

The kernels (``kernels/cpu/int8.py``), the calibration (``calibration.py``) and the layer plan read
these types, so they live here, below all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: How ``calibrate`` turns the observed activations into a range.
CALIBRATION_METHODS = ("minmax", "percentile")
#: The percentile of |x| (and of x) the ``percentile`` method keeps by default.
DEFAULT_PERCENTILE = 99.99
#: ``--int8-layers``: ``auto`` (int8 where the cost model estimates it faster), ``all`` (every conv).
INT8_LAYERS = ("auto", "all")


@dataclass(frozen=True)
class ActivationRange:
    """The range of a layer input the calibration saw (or clipped to)."""

    low: float
    high: float


@dataclass(frozen=True)
class InputQuantization:
    """``x_q = clamp(rint(x / scale + zero_point), 0, 255)``."""

    scale: float
    zero_point: int  # 0 (never-negative inputs) or 128

    @classmethod
    def from_range(cls, rng: ActivationRange) -> InputQuantization:
        if rng.low >= 0:
            return cls(_positive(rng.high / 255.0), 0)
        return cls(_positive(max(-rng.low, rng.high) / 127.0), 128)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """The uint8 codes of float32 ``x``, rounded as the kernels do: ``x · (1/scale) + zero_point``
        rounded to float32 once (an FMA; exact in float64 first), then to the nearest integer, ties to even."""
        inv = np.float64(np.float32(1.0 / self.scale))
        shifted = (np.asarray(x, np.float32).astype(np.float64) * inv + self.zero_point).astype(np.float32)
        return np.clip(np.rint(np.minimum(shifted, 32000.0)), 0, 255).astype(np.uint8)


#: dtype of the channel-quad words an int8 conv hands the next one (Relax and TIR tensors).
QUAD_WORD_DTYPE = "uint32"


def channel_quads(channels: int) -> int:
    """Words per pixel of ``channels`` channels in the channel-quad layout (four uint8 codes a word)."""
    return -(-channels // 4)


@dataclass(frozen=True)
class Int8Handoff:
    """How an int8 conv meets its neighbours: whether its input arrives as channel-quad words the
    previous layer's epilogue wrote (``quads_in``), whether it writes its float32 output (``float_out``:
    some consumer is not an int8 conv), the quantization of the next int8 layer's input to write
    its output in as words too (``out``; None: none), and, where its residual arrives as words
    another layer wrote, their quantization (``residual``; None: the residual is float32)."""

    quads_in: bool = False
    float_out: bool = True
    out: InputQuantization | None = None
    residual: InputQuantization | None = None


def _positive(scale: float) -> float:
    # An all-zero input (or one the calibration never saw move) still needs a usable scale.
    return float(scale) if scale > 0 and np.isfinite(scale) else 1.0


def quantize_weights(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 weights: ``(w_q (Cout, ...) int8, s_w (Cout,) float32)``."""
    w = np.asarray(weight, np.float32)
    flat = w.reshape(w.shape[0], -1)
    scales = np.abs(flat).max(axis=1) / 127.0
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.rint(flat / scales[:, None]), -127, 127).astype(np.int8)
    return q.reshape(w.shape), scales


def observed_range(samples: list[np.ndarray], method: str = "minmax",
                   percentile: float = DEFAULT_PERCENTILE) -> ActivationRange:
    """The range of the calibration ``samples`` (arrays of one layer input): ``minmax`` keeps the
    extremes; ``percentile`` clips the tails at ``percentile`` (of the values, both signs)."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, not {method!r}")
    values = np.concatenate([np.asarray(s, np.float32).ravel() for s in samples])
    if values.size == 0:
        return ActivationRange(0.0, 0.0)
    low, high = float(values.min()), float(values.max())
    if method == "percentile":
        high = float(np.percentile(values, percentile)) if high > 0 else high
        low = float(np.percentile(values, 100.0 - percentile)) if low < 0 else low
    return ActivationRange(min(low, 0.0), max(high, 0.0))


def dense_weights_of_penni(weight: np.ndarray, basis_weight: np.ndarray, in_channels: int) -> np.ndarray:
    """The (Cout, Cin, kh, kw) conv a PENNI layer computes: ``W[o, i] = Σ_r C[o, i·d + r] · B[i·d + r]``
    (``weight`` the (Cout, Cin·d) coefficients, ``basis_weight`` the (Cin·d, 1, kh, kw) grouped kernels)."""
    cout = weight.shape[0]
    maps, _, kh, kw = basis_weight.shape
    d = maps // in_channels
    coefs = np.asarray(weight, np.float64).reshape(cout, in_channels, d)
    kernels = np.asarray(basis_weight, np.float64).reshape(in_channels, d, kh * kw)
    dense = np.einsum("oir,irt->oit", coefs, kernels)
    return dense.reshape(cout, in_channels, kh, kw).astype(np.float32)
