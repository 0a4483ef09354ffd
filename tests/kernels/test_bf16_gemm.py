"""The bf16 dense kernels (``compile --precision bf16``) against a NumPy/PyTorch reference of the same
arithmetic: operands rounded to bf16 (nearest, ties to even), products summed in float32 or better.

The rounding and packing are checked everywhere; the kernels run only on a CPU with AVX512_BF16."""

import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from penni_deploy.kernels.cpu import CpuKernels, bf16
from penni_deploy.kernels.cpu.gemm import (
    conv_source,
    default_tile,
    gemm_conv_kernel,
    linear_kernel,
    needs_base_table,
    pack_weights,
)
from penni_deploy.kernels.cpu.native import load_into_process
from penni_deploy.machine import cpu_flags
from penni_deploy.plan import Epilogue
from penni_deploy.plan.geometry import ConvGeometry

from test_dense_conv import CASES, case_arrays

needs_bf16 = pytest.mark.skipif("avx512_bf16" not in (cpu_flags() or []),
                                reason="this CPU has no AVX512_BF16 (vdpbf16ps)")


def test_rounding_matches_torch_bfloat16():
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10_000),
        np.array([0.0, -0.0, 1.0, -1.0, 3.4e38, -3.4e38, 1e-40, np.inf, -np.inf], np.float32),
        # exact ties between two bf16 values: 1 + 2^-8 rounds to even (1.0), 1 + 3·2^-8 up
        np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, -(1 + 2.0 ** -8)], np.float32),
    ])
    expected = torch.from_numpy(values).bfloat16().float().numpy()
    np.testing.assert_array_equal(bf16.round_to_bf16(values), expected)


def test_pairs_pack_even_low_odd_high_and_pad_an_odd_length():
    values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)  # K = 3 along axis 0
    packed = bf16.pack_pairs(values, axis=0)
    assert packed.shape == (2, 2) and packed.dtype == np.uint32
    bits = bf16.round_to_bf16_bits(values)
    assert packed[0, 1] == bits[0, 1] | (bits[1, 1] << 16)
    assert packed[1, 0] == bits[2, 0]  # the pad is zero in the high half


def _reference_tile(A, B):
    return bf16.round_to_bf16(A).T.astype(np.float64) @ bf16.round_to_bf16(B).astype(np.float64)


def _tile_function():
    f = load_into_process().penni_bf16_tile
    P, I32 = ctypes.c_void_p, ctypes.c_int32
    f.argtypes, f.restype = [P, I32, P, I32, I32, I32, I32, P, I32, I32, P, P, I32], I32
    return f


@needs_bf16
@pytest.mark.parametrize("rows, cols, depth, col_stride", [
    (8, 48, 256, 1), (8, 48, 1, 1), (1, 1, 2, 1), (3, 17, 7, 1), (5, 33, 65, 1), (7, 16, 10, 1),
    (8, 48, 64, 100), (2, 5, 9, 7),
])
@pytest.mark.parametrize("epilogue", [Epilogue(), Epilogue(bias=True, residual=True, relu=True),
                                      Epilogue(bias=True), Epilogue(residual=True), Epilogue(relu=True)],
                         ids=lambda e: e.describe() or "none")
def test_micro_kernel_tile(rows, cols, depth, col_stride, epilogue):
    f = _tile_function()
    rng = np.random.default_rng(rows * 100 + cols)
    A = rng.standard_normal((depth, rows)).astype(np.float32)
    B = rng.standard_normal((depth, cols)).astype(np.float32)
    a, b = bf16.pack_pairs(A, 0), bf16.pack_pairs(B, 0)
    row_stride = cols if col_stride == 1 else 1
    size = rows * row_stride + cols * col_stride
    out = np.full(size, np.nan, np.float32)
    residual = rng.standard_normal(size).astype(np.float32)
    # The output channel is the row axis in the pixels orientation (col_stride 1), the column axis in
    # the channels one; the bias follows it.
    per_rows = col_stride == 1
    bias = rng.standard_normal(rows if per_rows else cols).astype(np.float32)
    flags = ((bf16.RELU if epilogue.relu else 0) | (bf16.RESIDUAL if epilogue.residual else 0)
             | ((bf16.BIAS_ROWS if per_rows else bf16.BIAS_COLS) if epilogue.bias else 0))
    assert f(a.ctypes.data, rows, b.ctypes.data, cols, a.shape[0], rows, cols, out.ctypes.data, row_stride,
             col_stride, bias.ctypes.data, residual.ctypes.data, flags) == 0
    at = np.array([[i * row_stride + j * col_stride for j in range(cols)] for i in range(rows)])
    ref = _reference_tile(A, B)
    if epilogue.bias:
        ref = ref + (bias[:, None] if per_rows else bias[None, :])
    if epilogue.residual:
        ref = ref + residual[at]
    if epilogue.relu:
        ref = np.maximum(ref, 0)
    np.testing.assert_allclose(out[at], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    untouched = np.ones(size, bool)
    untouched[at.ravel()] = False
    assert np.isnan(out[untouched]).all()  # nothing outside the tile is written


@needs_bf16
def test_micro_kernel_refuses_a_tile_it_cannot_hold():
    f = _tile_function()
    buf = np.zeros(1024, np.uint32)
    for rows, cols in [(9, 16), (0, 16), (4, 49), (4, 0)]:
        assert f(buf.ctypes.data, 8, buf.ctypes.data, 48, 1, rows, cols, buf.ctypes.data, 48, 1,
                 buf.ctypes.data, buf.ctypes.data, 0) == -1
    # a bias along both axes is a caller's mistake
    assert f(buf.ctypes.data, 8, buf.ctypes.data, 48, 1, 8, 48, buf.ctypes.data, 48, 1, buf.ctypes.data,
             buf.ctypes.data, bf16.BIAS_ROWS | bf16.BIAS_COLS) == -1


def _run_bf16_case(case, epilogue, batch, orientation, run_primfunc, seed=1):
    geom, x, w, bias, residual = case_arrays(case, batch, seed)
    cout, pixels = case["cout"], geom.out_height * geom.out_width
    args = [x, bf16.pack_weight_pairs(pack_weights(w.reshape(cout, -1), orientation, default_tile(16)))]
    args += [conv_source(geom)[2]] if needs_base_table(geom) else []
    args += ([bias] if epilogue.bias else []) + ([residual] if epilogue.residual else [])
    kernel = gemm_conv_kernel(geom, cout, epilogue, lanes=16, threads=2, orientation=orientation, precision="bf16")
    out = run_primfunc(kernel, *args, np.full((batch, cout, pixels), np.nan, np.float32))

    top, left, bottom, right = case["pad"]
    xr, wr = (torch.from_numpy(bf16.round_to_bf16(a)).double() for a in (x, w))
    ref = F.conv2d(F.pad(xr, (left, right, top, bottom)), wr, stride=case["stride"],
                   dilation=case["dil"]).reshape(out.shape).numpy()
    ref = epilogue.apply_reference(ref, bias, residual)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@needs_bf16
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("orientation", ["pixels", "channels"])
def test_bf16_gemm_conv_matches_rounded_reference(case, orientation, run_primfunc):
    load_into_process()
    _run_bf16_case(case, Epilogue(), 1, orientation, run_primfunc)
    _run_bf16_case(case, Epilogue(bias=True, residual=True, relu=True), 2, orientation, run_primfunc, seed=2)


@needs_bf16
@pytest.mark.parametrize("batch, depth, out", [(1, 37, 70), (3, 64, 48), (9, 5, 7), (2, 100, 1), (8, 33, 49)])
def test_bf16_linear_matches_rounded_reference(batch, depth, out, run_primfunc):
    load_into_process()
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, depth)).astype(np.float32)
    w = rng.standard_normal((out, depth)).astype(np.float32)
    kernel, constants = CpuKernels(lanes=16, threads=2, precision="bf16").linear(batch, np.ascontiguousarray(w.T))
    y = run_primfunc(kernel, x, *constants, np.full((batch, out), np.nan, np.float32))
    ref = bf16.round_to_bf16(x).astype(np.float64) @ bf16.round_to_bf16(w).T.astype(np.float64)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_unknown_precision_is_refused():
    geom = ConvGeometry(1, 4, 8, 8, 1, 1)
    with pytest.raises(ValueError, match="precision"):
        gemm_conv_kernel(geom, 8, Epilogue(), precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        linear_kernel(1, 8, 8, precision="int4")
