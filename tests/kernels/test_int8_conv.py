"""The int8 conv tile (native/int8_conv.c) against NumPy doing the same arithmetic: exact integer
sums of the quantized operands, then the float32 epilogue. Called through ctypes, one tile at a time,
on the shapes that stress it (stride 2 and 3, padding, dilation, odd widths, 1×1 and 7×7, a Cin that
is not a multiple of four, all-zero and fully dense weights, channels with no weight at all)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from penni_deploy.kernels.cpu import int8
from penni_deploy.machine import cpu_flags
from penni_deploy.plan.geometry import ConvGeometry
from penni_deploy.plan.quantize import ActivationRange, InputQuantization

pytestmark = pytest.mark.skipif("avx512_vnni" not in (cpu_flags() or []), reason="needs a CPU with AVX512_VNNI")


def reference(x, weight, g: ConvGeometry, packed: int8.PackedInt8Conv, bias, residual, relu):
    """The kernel's arithmetic in NumPy: quantized input (zero point in the padding), exact int64 sums."""
    q = packed.input
    top, left, bottom, right = g.padding
    xq = q.quantize(x).astype(np.int64)
    xq = np.pad(xq, ((0, 0), (top, bottom), (left, right)), constant_values=q.zero_point)
    cout, cin, kh, kw = weight.shape
    acc = np.zeros((cout, g.out_height, g.out_width), np.int64)
    wq = packed.weights.astype(np.int64)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * g.dilation[0], kx * g.dilation[1]
            window = xq[:, y0:y0 + (g.out_height - 1) * g.stride[0] + 1:g.stride[0],
                        x0:x0 + (g.out_width - 1) * g.stride[1] + 1:g.stride[1]]
            acc += np.einsum("oi,ihw->ohw", wq[:, :, ky, kx], window)
    acc = acc.reshape(cout, -1) - packed.comp[:, None]
    out = (acc.astype(np.float64) * packed.scale[:, None].astype(np.float64)
           + (bias[:, None] if bias is not None else 0.0)).astype(np.float32)
    if residual is not None:
        out = out + residual
    return np.maximum(out, 0) if relu else out


def as_quads(codes: np.ndarray, fill: int) -> np.ndarray:
    """uint8 codes (C, ...) as channel-quad words (⌈C/4⌉, ...): channel 4q+s in byte s, ``fill`` past C."""
    c = codes.shape[0]
    padded = np.full((-(-c // 4) * 4,) + codes.shape[1:], fill, np.uint8)
    padded[:c] = codes
    moved = np.moveaxis(padded.reshape((-1, 4) + codes.shape[1:]), 1, -1)
    return np.ascontiguousarray(moved).view(np.uint32)[..., 0]


def run_tile(lib, x, packed, g, rows_total, bias, residual, relu, *, quads_in=False, out_quant=None,
             float_out=True, residual_quant=None):
    """The C tile over every row tile of one image; returns ``y`` (float32, NaN where never written)
    and, with ``out_quant``, the words it wrote for the next layer."""
    cout = packed.scale.shape[0]
    pixels = g.out_height * g.out_width
    y = np.full((cout, pixels), np.nan, np.float32)
    yq = np.full((-(-cout // 4), pixels), 0xDEADBEEF, np.uint32)
    scratch = np.zeros(int8.scratch_words(g, packed.rows), np.uint32)
    flags = (int8.RELU if relu else 0) | (int8.BIAS if bias is not None else 0) | (
        int8.RESIDUAL if residual is not None else 0)
    flags |= (int8.QUADS_IN if quads_in else 0) | (int8.QUADS_OUT if out_quant else 0)
    flags |= 0 if float_out else int8.NO_FLOAT_OUT
    flags |= int8.RESIDUAL_QUADS if residual_quant else 0
    res_quant = residual_quant or packed.input
    out_quant = out_quant or packed.input
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    dummy = packed.scale
    fn = lib.penni_q8_conv_tile
    fn.restype = ctypes.c_int32
    for y0 in range(0, g.out_height, packed.rows):
        rc = fn(ptr(x), ptr(packed.geometry), ctypes.c_int32(y0), ctypes.c_int32(packed.rows), ctypes.c_int32(0),
                ctypes.c_int32(len(packed.qptr) - 1),
                ctypes.c_float(np.float32(1.0 / packed.input.scale)), ctypes.c_int32(packed.input.zero_point),
                ptr(scratch), ptr(packed.qptr), ptr(packed.qoff), ptr(packed.qw), ptr(packed.comp),
                ptr(packed.scale), ptr(bias if bias is not None else dummy),
                ptr(residual if residual is not None else dummy),
                ctypes.c_float(np.float32(res_quant.scale)), ctypes.c_int32(res_quant.zero_point), ptr(y), ptr(yq),
                ctypes.c_float(np.float32(1.0 / out_quant.scale)), ctypes.c_int32(out_quant.zero_point),
                ctypes.c_int32(flags))
        assert rc == 0
    return (y, yq) if flags & int8.QUADS_OUT else y


@pytest.fixture(scope="module")
def lib():
    from penni_deploy.kernels.cpu.native import load_into_process

    return load_into_process()


CASES = [
    # cin, h, w, cout, k, stride, padding, dilation, rows
    (16, 32, 32, 16, 3, 1, 1, 1, 4),
    (3, 32, 32, 16, 3, 1, 1, 1, 4),  # Cin not a multiple of 4 (the stem)
    (16, 17, 19, 8, 3, 2, 1, 1, 3),  # stride 2, odd sizes
    (8, 15, 13, 5, 3, 3, 1, 1, 1),  # stride 3: the gathered loads
    (12, 12, 40, 7, 3, 1, 2, 2, 2),  # dilation 2, padding 2, three vectors a row
    (32, 8, 8, 24, 1, 1, 0, 1, 4),  # 1×1, a row shorter than a vector
    (32, 9, 9, 16, 1, 2, 0, 1, 5),  # 1×1 stride 2 (a ResNet shortcut)
    (3, 30, 30, 9, 7, 2, 3, 1, 3),  # 7×7 stride 2 (the ImageNet stem)
    (20, 6, 70, 4, 3, 1, 1, 1, 2),  # wider than four vectors
    # rows narrower than a vector share one: 2 rows of 8 lanes, 4 of 4, compressed when not full
    (16, 8, 8, 12, 3, 1, 1, 1, 4),  # 8×8: two rows a vector, contiguous
    (16, 4, 4, 8, 3, 1, 1, 1, 4),  # 4×4: four rows a vector
    (16, 7, 7, 8, 3, 1, 1, 1, 7),  # 7×7 (ImageNet's last stage): compressed, an odd row count
    (8, 6, 6, 4, 3, 1, 1, 1, 3),  # 6 columns, three rows: a half-empty last vector
    (12, 3, 3, 8, 3, 1, 1, 1, 3),  # 3×3 in one vector
    (16, 8, 8, 8, 3, 2, 1, 1, 2),  # 4 columns at stride 2: the gathered narrow loads
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("signed", [False, True])
def test_tile_matches_integer_reference(lib, case, signed):
    cin, h, w, cout, k, stride, pad, dil, rows = case
    rng = np.random.default_rng(hash(case) % 2**32)
    g = ConvGeometry(1, cin, h, w, k, k, (stride, stride), (pad, pad, pad, pad), (dil, dil))
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    if not signed:
        x = np.maximum(x, 0)
    weight = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    weight[rng.random(weight.shape) < 0.6] = 0  # sparse, with whole quads missing
    weight[1 % cout] = 0  # a channel with no weight: bias (and residual) only
    # values past the calibrated range clamp
    quant = InputQuantization.from_range(ActivationRange(float(x.min()) * 0.9, float(x.max()) * 0.8))
    packed = int8.pack_int8_conv(weight, g, quant, rows)
    bias = rng.standard_normal(cout).astype(np.float32)
    residual = rng.standard_normal((cout, g.out_height * g.out_width)).astype(np.float32)
    for b, r, relu in [(bias, residual, True), (None, None, False), (bias, None, False)]:
        got = run_tile(lib, x, packed, g, rows, b, r, relu)
        want = reference(x, weight, g, packed, b, r, relu)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_values_far_outside_the_range_saturate(lib):
    g = ConvGeometry(1, 4, 4, 20, 1, 1)
    x = np.zeros((4, 4, 20), np.float32)
    x[0, 0, :4] = [1e30, np.inf, -1e30, -np.inf]
    x[1, 1, :3] = [3e9, -3e9, 255.0]
    weight = np.eye(4, dtype=np.float32).reshape(4, 4, 1, 1)
    for low in (0.0, -1.0):
        packed = int8.pack_int8_conv(weight, g, InputQuantization.from_range(ActivationRange(low, 1.0)), 4)
        got = run_tile(lib, x, packed, g, 4, None, None, False)
        np.testing.assert_allclose(got, reference(x, weight, g, packed, None, None, False), rtol=1e-6)
        assert got[0, 0] == got[0, 1] == got.max()  # +inf and 1e30 at the top code, not wrapped to 0


@pytest.mark.parametrize("density", [0.0, 1.0])
def test_empty_and_dense_weights(lib, density):
    g = ConvGeometry(1, 8, 10, 10, 3, 3, (1, 1), (1, 1, 1, 1))
    rng = np.random.default_rng(3)
    x = rng.random((8, 10, 10), dtype=np.float32)
    weight = rng.standard_normal((6, 8, 3, 3)).astype(np.float32) * density
    quant = InputQuantization.from_range(ActivationRange(0.0, 1.0))
    packed = int8.pack_int8_conv(weight, g, quant, 5)
    assert packed.nnz_quads == (0 if density == 0 else 2 * 2 * 9)  # two blocks of channels, two quads, nine taps
    bias = rng.standard_normal(6).astype(np.float32)
    got = run_tile(lib, x, packed, g, 5, bias, None, False)
    np.testing.assert_allclose(got, reference(x, weight, g, packed, bias, None, False), rtol=1e-6, atol=1e-5)


def test_quantized_conv_is_close_to_the_float_conv(lib):
    """Not the arithmetic, the point of it: int8 ends within a few percent of the float32 conv."""
    torch = pytest.importorskip("torch")
    g = ConvGeometry(1, 16, 16, 16, 3, 3, (1, 1), (1, 1, 1, 1))
    rng = np.random.default_rng(5)
    x = np.maximum(rng.standard_normal((16, 16, 16)), 0).astype(np.float32)
    weight = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    packed = int8.pack_int8_conv(weight, g, InputQuantization.from_range(ActivationRange(0.0, float(x.max()))), 4)
    got = run_tile(lib, x, packed, g, 4, None, None, False)
    want = torch.nn.functional.conv2d(torch.from_numpy(x)[None], torch.from_numpy(weight), padding=1)[0]
    want = want.reshape(16, -1).numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 2e-2


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_tile_reads_and_writes_quantized_words(lib, case):
    """The int8 handoff: a tile reading the words a previous layer wrote computes exactly what it
    computes from the float32 input; the words it writes are its output quantized as the next
    layer's input (channels past Cout at the next layer's zero point)."""
    cin, h, w, cout, k, stride, pad, dil, rows = case
    rng = np.random.default_rng(hash(case) % 2**31 + 1)
    g = ConvGeometry(1, cin, h, w, k, k, (stride, stride), (pad, pad, pad, pad), (dil, dil))
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    weight = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    weight[rng.random(weight.shape) < 0.5] = 0
    quant = InputQuantization.from_range(ActivationRange(float(x.min()), float(x.max()) * 0.8))
    packed = int8.pack_int8_conv(weight, g, quant, rows)
    bias = rng.standard_normal(cout).astype(np.float32)
    residual = rng.standard_normal((cout, g.out_height * g.out_width)).astype(np.float32)
    from_float = run_tile(lib, x, packed, g, rows, bias, residual, True)
    words_in = as_quads(quant.quantize(x).reshape(cin, -1), quant.zero_point)
    for relu, next_low in [(True, 0.0), (False, -2.0)]:
        nxt = InputQuantization.from_range(ActivationRange(next_low, 3.0))
        y, yq = run_tile(lib, words_in, packed, g, rows, bias, residual, relu, quads_in=True, out_quant=nxt)
        want = reference(x, weight, g, packed, bias, residual, relu)
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
        if relu:
            np.testing.assert_array_equal(y, from_float)  # the same codes, so the same sums
        np.testing.assert_array_equal(yq, as_quads(nxt.quantize(y), nxt.zero_point))
    only_words, yq = run_tile(lib, x, packed, g, rows, None, None, True, out_quant=quant, float_out=False)
    assert np.isnan(only_words).all()  # no float32 store at all
    np.testing.assert_array_equal(yq, as_quads(quant.quantize(reference(x, weight, g, packed, None, None, True)),
                                               quant.zero_point))


@pytest.mark.parametrize("case", CASES[:4] + CASES[-6:], ids=lambda c: "x".join(map(str, c)))
def test_residual_read_as_words(lib, case):
    """A residual that arrives as another layer's words adds exactly its dequantized codes."""
    cin, h, w, cout, k, stride, pad, dil, rows = case
    rng = np.random.default_rng(hash(case) % 2**31 + 2)
    g = ConvGeometry(1, cin, h, w, k, k, (stride, stride), (pad, pad, pad, pad), (dil, dil))
    x = np.maximum(rng.standard_normal((cin, h, w)), 0).astype(np.float32)
    weight = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    packed = int8.pack_int8_conv(weight, g, InputQuantization.from_range(ActivationRange(0.0, float(x.max()))), rows)
    residual = rng.standard_normal((cout, g.out_height * g.out_width)).astype(np.float32)
    for low in (0.0, -3.0):  # a never-negative residual (zero point 0) and a signed one (128)
        rq = InputQuantization.from_range(ActivationRange(low, 2.5))
        codes = rq.quantize(residual)
        dequantized = ((codes.astype(np.float32) - np.float32(rq.zero_point)) * np.float32(rq.scale)).astype(np.float32)
        got = run_tile(lib, x, packed, g, rows, None, as_quads(codes, rq.zero_point), True, residual_quant=rq)
        want = reference(x, weight, g, packed, None, dequantized, True)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
