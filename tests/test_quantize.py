"""plan/quantize.py: the int8 scales and rounding the kernels and the calibration share."""

import numpy as np
import pytest
import torch

from penni_deploy.plan.quantize import (
    ActivationRange,
    InputQuantization,
    dense_weights_of_penni,
    observed_range,
    quantize_weights,
)


def test_never_negative_inputs_use_all_256_levels():
    q = InputQuantization.from_range(ActivationRange(0.0, 2.55))
    assert q.zero_point == 0 and q.scale == pytest.approx(0.01)
    assert list(q.quantize(np.array([0.0, 0.004, 0.005, 0.015, 2.55, 9.0, -1.0], np.float32))) == [
        0, 0, 0, 2, 255, 255, 0]  # ties to even (0.5 -> 0, 1.5 -> 2), clamped both ways


def test_signed_inputs_are_symmetric_around_128():
    q = InputQuantization.from_range(ActivationRange(-2.0, 1.0))
    assert q.zero_point == 128 and q.scale == pytest.approx(2.0 / 127)
    codes = q.quantize(np.array([0.0, -2.0, 2.0, -5.0], np.float32)).astype(int)
    assert list(codes) == [128, 1, 255, 0]


def test_an_all_zero_range_still_has_a_scale():
    assert InputQuantization.from_range(ActivationRange(0.0, 0.0)).scale == 1.0


def test_weights_per_output_channel():
    w = np.array([[[[1.0, -0.5]]], [[[0.0, 0.0]]], [[[-254.0, 127.0]]]], np.float32)
    q, scales = quantize_weights(w)
    assert q.dtype == np.int8
    assert q.reshape(3, 2).tolist() == [[127, -64], [0, 0], [-127, 64]]  # -63.5 -> -64, 63.5 -> 64 (even)
    np.testing.assert_allclose(scales, [1 / 127, 1.0, 2.0])


def test_ranges_minmax_and_percentile():
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(10_000).astype(np.float32) for _ in range(3)]
    full = observed_range(values)
    assert full.low == min(v.min() for v in values) and full.high == max(v.max() for v in values)
    clipped = observed_range(values, "percentile", 99.0)
    assert 2.0 < clipped.high < 2.7 and -2.7 < clipped.low < -2.0
    assert observed_range([np.abs(values[0])], "percentile", 99.0).low == 0.0  # never negative stays so
    with pytest.raises(ValueError, match="calibration method"):
        observed_range(values, "kl")


def test_dense_weights_of_penni_is_the_two_stage_conv():
    rng = np.random.default_rng(1)
    cin, cout, d = 3, 4, 5
    coefs = rng.standard_normal((cout, cin * d)).astype(np.float32)
    basis = rng.standard_normal((cin * d, 1, 3, 3)).astype(np.float32)
    x = torch.from_numpy(rng.standard_normal((1, cin, 7, 7)).astype(np.float32))
    maps = torch.nn.functional.conv2d(x, torch.from_numpy(basis), padding=1, groups=cin)
    two_stage = torch.nn.functional.conv2d(maps, torch.from_numpy(coefs)[:, :, None, None])
    dense = torch.nn.functional.conv2d(x, torch.from_numpy(dense_weights_of_penni(coefs, basis, cin)), padding=1)
    np.testing.assert_allclose(dense.numpy(), two_stage.numpy(), rtol=1e-5, atol=1e-5)
