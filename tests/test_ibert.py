"""kdqat.nnlut.ibert: I-BERT's published GELU errors, hand-computed float and integer values,
integer Newton sqrt, integer softmax and LayerNorm against the exact ops (NNLUT.md §3, §4)."""
import math

import torch
import torch.nn.functional as F

from kdqat.nnlut import ibert


def _gelu_errors(fn, x):
    e = fn(x) - F.gelu(x)
    return float(e.abs().max()), float(e.pow(2).mean().sqrt())


def test_published_gelu_table1_numbers():
    # I-BERT Table 1 on [-4, 4]: L2 = RMSE over a uniform grid (NNLUT.md §4), L_inf = max |e|.
    x = torch.linspace(-4, 4, 80_001, dtype=torch.float64)
    linf, l2 = _gelu_errors(ibert.i_gelu, x)
    assert round(linf, 3) == 0.018 and round(l2, 4) == 0.0082
    linf, l2 = _gelu_errors(ibert.sigmoid_gelu, x)
    assert round(linf, 3) == 0.020 and round(l2, 3) == 0.012
    linf, l2 = _gelu_errors(ibert.h_gelu, x)          # published 0.068 / 0.031 (we get 0.0687)
    assert abs(linf - 0.068) < 1e-3 and round(l2, 3) == 0.031


def test_i_gelu_hand_values():
    x = torch.tensor([0.0, 1.0, 3.0, -3.0, 2.5], dtype=torch.float64)
    y = ibert.i_gelu(x)
    # x = 1: z = 1/√2, L = -0.2888·(0.70711 - 1.769)² + 1 = 0.674344; ½·(1 + L) = 0.837172
    # |x|/√2 ≥ 1.769 saturates: L = ±1 exactly, so i-GELU(3) = 3, i-GELU(-3) = 0, i-GELU(2.5) = 2.5
    assert torch.allclose(y, torch.tensor([0.0, 0.8371721, 3.0, 0.0, 2.5], dtype=torch.float64), atol=1e-7)


def test_i_exp_hand_value_and_max_error():
    # x = -1: z = 1, p = -1 + ln2 = -0.306853, L(p) = 0.3585·1.046147² + 0.344 = 0.736351, /2
    assert abs(float(ibert.i_exp(torch.tensor([-1.0], dtype=torch.float64))) - 0.3681755) < 1e-7
    x = torch.linspace(-20, 0, 200_001, dtype=torch.float64)
    err = float((ibert.i_exp(x) - x.exp()).abs().max())
    assert round(err, 4) == 0.0021          # NNLUT.md §4 with the rounded coefficients (paper: 1.9e-3)


def test_i_poly_int_hand():
    q, s = ibert.i_poly_int(torch.tensor([3]), 0.5, 1.0, 1.0, 1.0)      # (3+2)² + 4 = 29, S = 0.25
    assert q.tolist() == [29] and s == 0.25
    q, s = ibert.i_poly_int(torch.tensor([3]), 0.3, 1.0, 1.0, 1.0)      # ⌊3.33⌋ = 3, ⌊11.1⌋ = 11: 36 + 11
    assert q.tolist() == [47] and abs(s - 0.09) < 1e-15


def test_i_exp_int_hand():
    # S = 1/16, q = -16 (x = -1): q_ln2 = ⌊11.09⌋ = 11, z = ⌊16/11⌋ = 1, q_p = -5,
    # q_b = ⌊21.65⌋ = 21, q_c = ⌊0.344/(0.3585/256)⌋ = 245, (16)² + 245 = 501, >> 1 = 250
    q, s = ibert.i_exp_int(torch.tensor([-16]), 2**-4)
    assert q.tolist() == [250] and s == 0.3585 / 256


def test_int_simulations_track_float():
    x = torch.linspace(-4, 4, 80_001, dtype=torch.float64)
    s = 2.0**-14
    q_in = ibert.quantize_int(x, s)
    q, so = ibert.i_gelu_int(q_in, s)
    assert float((q.double() * so - ibert.i_gelu(q_in.double() * s)).abs().max()) < 3e-5
    s = 2.0**-12      # the error-table scale still reproduces the published numbers
    q, so = ibert.i_gelu_int(ibert.quantize_int(x, s), s)
    linf, l2 = _gelu_errors(lambda _: q.double() * so, x)
    assert round(linf, 3) == 0.019 and round(l2, 4) == 0.0082
    xe = torch.linspace(-20, 0, 100_001, dtype=torch.float64)
    q_in = ibert.quantize_int(xe, 2.0**-14)
    q, so = ibert.i_exp_int(q_in, 2.0**-14)
    assert float((q.double() * so - ibert.i_exp(q_in.double() * 2.0**-14)).abs().max()) < 5e-5


def test_i_sqrt_hand_and_exhaustive():
    n = torch.tensor([0, 1, 2, 15, 16, 17, 2**31 - 1])
    r, it = ibert.i_sqrt(n)
    # 16: x0 = 2^3 = 8 → 5 → 4 → stop (2 updates); 15: x0 = 4 → 3 → stop (1 update)
    assert r.tolist() == [0, 1, 1, 3, 4, 4, 46340] and it.tolist() == [0, 1, 1, 1, 2, 2, 4]
    n = torch.cat([torch.arange(0, 2**16), torch.randint(0, 2**31, (20_000,), generator=torch.Generator().manual_seed(0))])
    r, it = ibert.i_sqrt(n)
    assert bool(((r * r <= n) & ((r + 1) * (r + 1) > n)).all())
    assert int(it.max()) <= 5           # 5 updates occur just above 2^30 (x0 = 2^16 ≈ 2·√n)


def test_i_softmax_int_close_to_softmax():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g, dtype=torch.float64) * 3
    q, s = ibert.i_softmax_int(ibert.quantize_int(x, 2**-10), 2**-10)
    assert s == 2**-8
    assert float((q.double() * s - x.softmax(-1)).abs().max()) < 2**-8 + 2.5e-3
    assert bool(((q.sum(-1).double() * s - 1).abs() <= 16 * 2**-8).all())


def test_i_layernorm_int_hand_and_close():
    # C = 2, q = [1, 3]: y = [-1, 1], Σy² = 2, ⌊√2⌋ = 1, y·2^31/2 · √2/2^30 = ±√2 (coarse by design)
    out = ibert.i_layernorm_int(torch.tensor([[1, 3]]), torch.ones(2), torch.zeros(2))
    assert torch.allclose(out, torch.tensor([[-math.sqrt(2), math.sqrt(2)]], dtype=torch.float64), atol=1e-12)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(8, 384, generator=g, dtype=torch.float64) * 2 + 0.5
    w, b = torch.randn(384, generator=g, dtype=torch.float64), torch.randn(384, generator=g, dtype=torch.float64)
    s = 2.0**-12       # Σy² ≈ 2^36 here: exercises the even right shift before i_sqrt
    out = ibert.i_layernorm_int(ibert.quantize_int(h, s), w, b)
    assert float((out - F.layer_norm(h, (384,), w, b, eps=0.0)).abs().max()) < 1e-3


def test_i_rsqrt_int():
    x = torch.tensor([0.25, 1.0, 4.0, 1000.0], dtype=torch.float64)
    # n = x·2^20 → isqrt exact for these → ⌊2^31/r⌋·2^-21
    y = ibert.i_rsqrt_int(x)
    assert y[:3].tolist() == [2.0, 1.0, 0.5]
    assert abs(float(y[3]) - 1000 ** -0.5) < 1e-5
