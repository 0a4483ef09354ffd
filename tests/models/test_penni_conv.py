"""PenniConv2d: the two-stage form equals the dense form; from_conv is an exact rank-d factorization."""

import pytest
import torch
from torch import nn

from penni_deploy.errors import UnsupportedModelError
from penni_deploy.models import PenniConv2d

# (cin, cout, kernel, stride, padding, dilation, d, bias, spatial)
GEOMETRIES = {
    "3x3_s1_p1": (4, 6, 3, 1, 1, 1, 5, False, (9, 9)),
    "3x3_s2_p1_bias": (5, 7, 3, 2, 1, 1, 5, True, (11, 10)),
    "3x3_dil2_p2": (3, 4, 3, 1, 2, 2, 3, False, (13, 9)),
    "5x5_s2_p0_d7": (2, 3, 5, 2, 0, 1, 7, True, (15, 17)),
    "3x5_rect_pad_tuple": (3, 2, (3, 5), (2, 1), (1, 2), (1, 2), 4, False, (12, 13)),
    "d1": (6, 1, 3, 1, 1, 1, 1, False, (7, 7)),
}


@pytest.mark.parametrize("geom", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_two_stage_equals_dense(geom):
    cin, cout, k, stride, padding, dilation, d, bias, (h, w) = geom
    torch.manual_seed(0)
    conv = PenniConv2d(cin, cout, k, stride, padding, dilation, num_bases=d, bias=bias)
    if bias:
        nn.init.normal_(conv.bias)
    x = torch.randn(3, cin, h, w)
    assert conv.form == "two_stage"
    y_two = conv(x)
    conv.form = "dense"
    y_dense = conv(x)
    ref = nn.functional.conv2d(x, conv.dense_weight(), conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(y_two, y_dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_dense, ref)


@pytest.mark.parametrize("form", ["two_stage", "dense"])
def test_no_bases_left_gives_the_bias(form):
    conv = PenniConv2d(3, 4, 3, padding=1, num_bases=0, bias=True)
    conv.form = form
    with torch.no_grad():
        conv.bias.copy_(torch.arange(4.0))
        y = conv(torch.randn(2, 3, 5, 5))
    assert y.shape == (2, 4, 5, 5) and torch.equal(y, torch.arange(4.0).view(1, 4, 1, 1).expand_as(y))


def test_layout_matches_reference_state_dict():
    conv = PenniConv2d(3, 4, 3, padding=1, num_bases=5)
    assert {k: tuple(v.shape) for k, v in conv.state_dict().items()} == {"basis": (5, 9), "coefs": (12, 5)}
    # Row o*Cin + i of coefs is kernel (o, i).
    with torch.no_grad():
        conv.coefs.zero_()
        conv.coefs[2 * 3 + 1, 0] = 1.0
    weight = conv.dense_weight()
    assert torch.equal(weight[2, 1].flatten(), conv.basis[0])
    assert torch.count_nonzero(weight) == torch.count_nonzero(conv.basis[0])  # nothing else is set


def test_form_rejects_unknown_value():
    conv = PenniConv2d(2, 2, 3)
    with pytest.raises(ValueError, match="two_stage"):
        conv.form = "sparse"


@pytest.mark.parametrize("rank", [1, 3, 5])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_from_conv_exact_for_low_rank_kernels(rank, bias):
    gen = torch.Generator().manual_seed(rank)
    cout, cin = 6, 4
    conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, dilation=1, bias=bias)
    with torch.no_grad():
        # (Cout*Cin, rank) @ (rank, 9): a kernel matrix of rank `rank`
        low = torch.randn(cout * cin, rank, generator=gen) @ torch.randn(rank, 9, generator=gen)
        conv.weight.copy_(low.view(cout, cin, 3, 3))
    penni = PenniConv2d.from_conv(conv, num_bases=5)
    assert penni.num_bases == 5 and (penni.bias is not None) == bias
    torch.testing.assert_close(penni.dense_weight(), conv.weight, atol=1e-5, rtol=1e-5)
    x = torch.randn(2, cin, 9, 9, generator=gen)
    torch.testing.assert_close(penni(x), conv(x), atol=1e-5, rtol=1e-5)


def test_from_conv_is_best_rank_d_approximation():
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 8, 3, bias=False)
    penni = PenniConv2d.from_conv(conv, num_bases=2)
    mat = conv.weight.detach().double().reshape(64, 9)
    s = torch.linalg.svdvals(mat)
    err = (penni.dense_weight().double().reshape(64, 9) - mat).norm()
    torch.testing.assert_close(err, s[2:].norm(), atol=1e-5, rtol=1e-4)  # Eckart-Young


def test_from_conv_refuses_grouped_conv():
    with pytest.raises(UnsupportedModelError, match="groups"):
        PenniConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))


def test_coefficient_density():
    conv = PenniConv2d(2, 2, 3, num_bases=5)  # 20 coefficients
    with torch.no_grad():
        conv.coefs.zero_()
        conv.coefs[0, :3] = 1.0
    assert conv.coefficient_density() == pytest.approx(3 / 20)
