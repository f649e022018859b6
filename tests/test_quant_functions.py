"""Quantizer values and STE gradients on hand-made tensors (SPEC §2.1, §2.2, §2.4, §3.1).

Inputs are dyadic numbers in float64 so that every expected value below is exact (bitwise).
"""
import pytest
import torch

from kdqat.quant import learned_scale_ternary, quantize_activation, quantize_weight, ternary
from kdqat.quant.functions import asym_values, binary_values, sym_values, twn_values

D = torch.float64
W = torch.tensor([[0.25, -1.0, 2.0, 0.0],
                  [-3.0, 0.5, 0.125, -1.5]], dtype=D)


def t(x):
    return torch.tensor(x, dtype=D)


def test_twn_per_tensor_by_hand():
    # mean|W| = 8.375/8 = 1.046875, Δ = 0.7328; survivors 1, 2, 3, 1.5 -> α = 7.5/4 = 1.875
    a = 1.875
    expected = t([[0, -a, a, 0], [-a, 0, 0, -a]])
    assert torch.equal(ternary(W, "tensor"), expected)
    assert torch.equal(quantize_weight(W, "twn", 2, "tensor", clip=2.5),
                       t([[0, -1.75, 1.75, 0], [-1.75, 0, 0, -1.75]]))  # 3 -> 2.5 first: α = 7/4


def test_twn_per_row_scales_and_zero_row():
    # row 0: mean .8125, Δ .56875, survivors 1, 2 -> α 1.5; row 1: mean 1.28125, survivors 3, 1.5 -> 2.25
    w = torch.cat([W, torch.zeros(1, 4, dtype=D)])
    expected = t([[0, -1.5, 1.5, 0], [-2.25, 0, 0, -2.25], [0, 0, 0, 0]])
    assert torch.equal(ternary(w, "row"), expected)
    assert torch.equal(twn_values(w, 0.7), expected)
    assert not torch.isnan(ternary(w, "row")).any()


def test_twn_threshold_is_strict_and_configurable():
    w = t([[2.0, 1.0, 0.0, 1.0]])  # mean 1: threshold 1.0 -> Δ = 1, |W| = 1 is NOT kept
    assert torch.equal(twn_values(w, 1.0), t([[2.0, 0, 0, 0]]))
    assert torch.equal(twn_values(w, 0.7), t([[4 / 3, 4 / 3, 0, 4 / 3]]))
    with pytest.raises(ValueError, match="granularity"):
        ternary(w, "group")


def test_asym_zero_point_half_to_even_and_clamped_zero():
    w = t([[-1.0, -0.25, 0.5, 2.0],    # scale (2+1)/3 = 1, zero 1: round -> -1,-0,0(half-even),2
           [0.5, 1.0, 1.5, 3.5],      # scale 1, zero clamp(-round(.5)) = 0; 4 clamps to 3
           [0.0, 0.0, 0.0, 0.0]])     # scale 1e-5/3, stays 0
    expected = t([[-1.0, 0.0, 0.0, 2.0], [0.0, 1.0, 2.0, 3.0], [0, 0, 0, 0]])
    assert torch.equal(asym_values(w, 2), expected)
    assert torch.equal(quantize_weight(w, "asym", 2, "row", clip=None), expected)


@pytest.mark.parametrize("bits", range(2, 9))
def test_asym_at_most_2_pow_b_levels_per_row(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(6, 300, generator=g)
    q = asym_values(w, bits)
    for row, qrow in zip(w, q):
        assert 2 <= qrow.unique().numel() <= 2**bits
        assert (qrow - row).abs().max() <= (row.max() - row.min()) / (2**bits - 1)  # within one step


def test_sym_weight_and_activation_levels():
    x = t([-3.0, -1.0, 0.5, 2.0, 4.0])
    # clamp to ±2.5, scale 127/2.5: integer levels -127, -51, 25, 102, 127
    expected = t([-127, -51, 25, 102, 127]) / (127 / 2.5)
    torch.testing.assert_close(sym_values(x, 8, 2.5), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(quantize_activation(x, 8, 2.5), expected, rtol=0, atol=1e-15)
    # 2-bit sym weight: levels {-2.5, 0, 2.5} (max of the clamped tensor); W·0.4 rounds -0.4 -> 0, -0.6 -> -1
    assert torch.equal(quantize_weight(W, "sym", 2, clip=2.5), t([[0, 0, 2.5, 0], [-2.5, 0, 0, -2.5]]))
    assert torch.equal(sym_values(torch.zeros(3, dtype=D), 8, 2.5), torch.zeros(3, dtype=D))


def test_binary_values():
    assert torch.equal(binary_values(t([[0.5, -1.5, 0.0, 2.0]])), t([[1.0, -1.0, 1.0, 1.0]]))
    assert torch.equal(quantize_weight(t([[0.5, -1.5], [0.0, 2.0]]), "binary", 1, "row", clip=None),
                       t([[1.0, -1.0], [1.0, 1.0]]))


def test_group_granularity_scales_per_group():
    w = t([[0.25, -1.0, 2.0, 0.0, -3.0, 0.5, 0.125, -1.5]])  # groups of 4 == rows of W above
    q = quantize_weight(w, "twn", 2, "group", group_size=4, clip=None)
    assert torch.equal(q, t([[0, -1.5, 1.5, 0, -2.25, 0, 0, -2.25]]))
    with pytest.raises(ValueError, match="group_size"):
        quantize_weight(w, "twn", 2, "group", group_size=3, clip=None)


def test_weight_ste_masked_at_clip():
    w = t([3.0, -2.5, 2.4375, -0.125, 1.0]).reshape(1, 5).requires_grad_()
    g = t([[1.0, 2.0, 3.0, 4.0, 5.0]])
    (quantize_weight(w, "twn", 2, "tensor", clip=2.5) * g).sum().backward()
    assert torch.equal(w.grad, t([[0.0, 0.0, 3.0, 4.0, 5.0]]))  # zero where |W| >= 2.5


def test_weight_ste_identity():
    w = t([[3.0, -2.5, 2.4375, -0.125]]).requires_grad_()
    g = t([[1.0, 2.0, 3.0, 4.0]])
    for method, bits in (("twn", 2), ("asym", 4)):
        w.grad = None
        (quantize_weight(w, method, bits, "row", clip=None) * g).sum().backward()
        assert torch.equal(w.grad, g)


def test_activation_ste_masked_outside_clip():
    x = t([-3.0, -2.5, 0.0, 2.4, 2.5, 7.0]).requires_grad_()
    quantize_activation(x, 8, 2.5).sum().backward()
    assert torch.equal(x.grad, t([0, 0, 1, 1, 0, 0]))


def test_learned_scale_ternary_values_and_gradients():
    # mean|W| = 6.25/4 = 1.5625 = c (γ = 1); u = [.64, -1, .16, 1] -> round [1, -1, 0, 1]
    w = t([[1.0, -2.0, 0.25, 3.0]]).requires_grad_()
    gamma = t([[1.0]]).requires_grad_()
    q = learned_scale_ternary(w, gamma, "row")
    c = 1.5625
    assert torch.equal(q, t([[c, -c, 0.0, c]]))
    q.sum().backward()
    # dQ/dc = round(u) - u inside (0.36, -0.16), sign(W) outside (-1, +1) -> 0.2; dc/dγ = 1.5625
    torch.testing.assert_close(gamma.grad, t([[0.2 * 1.5625]]), rtol=0, atol=1e-12)
    assert torch.equal(w.grad, t([[1.0, 0.0, 1.0, 0.0]]))  # zero where clamped


def test_learned_scale_zero_row_is_finite():
    w = torch.zeros(2, 3, dtype=D, requires_grad=True)
    gamma = torch.ones(2, 1, dtype=D, requires_grad=True)
    q = learned_scale_ternary(w, gamma, "row")
    q.sum().backward()
    assert torch.equal(q, torch.zeros(2, 3, dtype=D))
    assert torch.isfinite(gamma.grad).all() and torch.isfinite(w.grad).all()
