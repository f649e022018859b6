"""I-BERT's integer-friendly non-linear approximations (NNLUT.md §3 "I-BERT formulas", §4).

Float references (any shape in → same shape out, elementwise):

* ``i_gelu(x)``   = x·½·[1 + L(x/√2)], L(z) = sgn(z)·[a·(min(|z|, −b) + b)² + 1], a = −0.2888,
  b = −1.769 (second-order erf fit on [0, 1.769], saturating beyond).
* ``i_exp(x)``    for x ≤ 0: z = ⌊−x/ln2⌋, p = x + z·ln2 ∈ (−ln2, 0], exp(x) ≈ L(p)·2^−z with
  L(p) = 0.3585·(p + 1.353)² + 0.344.
* ``h_gelu``, ``sigmoid_gelu``: the two other GELU approximations of I-BERT's Table 1.

Integer simulations (int64 tensors hold the integers; every ⌊·⌋ is explicit):

* ``i_poly_int(q, S, a, b, c)``: a·(x + b)² + c for x = q·S as q_out = (q + ⌊b/S⌋)² + ⌊c/(a·S²)⌋,
  S_out = a·S².
* ``i_gelu_int(q, S)``: i-erf on (q, S/k), k = 1.4142; its integer output floor-shifted by 14 bits
  (⌊q_L/2^14⌋, S_L·2^14) as in the I-BERT code; then q_out = q·(q_L + ⌊1/S_L⌋), S_out = S·S_L/2.
* ``i_exp_int(q, S)``: q_ln2 = ⌊ln2/S⌋, z = ⌊−q/q_ln2⌋ (capped at 30: inputs clamped to
  ≥ −30·q_ln2, as the code's n = 30), q_p = q + z·q_ln2, I-POLY on q_p, then q_L >> z.
* ``i_softmax_int(q, S)``: i-exp of q − max, re-quantised to 16 bits (symmetric, per tensor,
  scale max/(2^15 − 1): our reading of the code's 16-bit activation quantiser), then
  ⌊q·⌊2^32/Σq⌋ / 2^(32 − out_bits)⌋ with scale 2^−out_bits.
* ``i_sqrt(n)``: Newton x_{k+1} = ⌊(x_k + ⌊n/x_k⌋)/2⌋ from x_0 = 2^⌈bits(n)/2⌉, stopping when
  x_{k+1} ≥ x_k; returns ⌊√n⌋ and the number of iterations (updates that were kept).
* ``i_layernorm_int(q, weight, bias)``: over the last dim C: y = q − round(mean q), σ = i_sqrt(Σy²)
  (Σy² right-shifted by an even amount 2k to fit in 31 bits, σ shifted back by k: the code's
  dynamic shift), y·⌊2^31/σ⌋/2 floored, scale √C/2^30, then ·γ + β (no ε, as I-BERT).

Modules for swapping into a model (``kdqat.nnlut.ops.swap_ibert``; role "approx", method "ibert"):

* ``IGELU``: ``i_gelu`` (float formula), elementwise.
* ``ISoftmax``: callable ``(scores, dim=-1)``: x = scores − max (max detached), clamped below at
  −30·ln2 (the code's n = 30: HF's additive mask ≈ −3.4e38 would overflow ⌊−x/ln2⌋), e = ``i_exp(x)``,
  out = e / Σ_dim e (exact division, no 16-bit requantisation). A masked key gets weight
  ≈ L(p)·2^−30/Σ ≤ 1e-9 instead of 0. Half precision is computed in float32 and cast back.
* ``ILayerNorm``: integer LayerNorm over the last dim C (``i_layernorm_int``, integer Newton sqrt)
  of q = round(x/S), S = max_row|x|/(2^(bits−1) − 1) per row (our choice: one scale per token, so
  results do not depend on the batch; I-BERT quantises the LayerNorm input to ``bits`` = 22 with one
  static per-tensor scale), then γ, β in float; returned in x's dtype. Not differentiable.
"""
from __future__ import annotations

import math

import torch
from torch import nn

GELU_A, GELU_B, GELU_K = -0.2888, -1.769, 1.4142
EXP_A, EXP_B, EXP_C = 0.3585, 1.353, 0.344
LN2 = math.log(2.0)
ERF_SHIFT = 14
EXP_MAX_SHIFT = 30


def _erf_poly(z: torch.Tensor) -> torch.Tensor:
    """L(z) = sgn(z)·[a·(min(|z|, −b) + b)² + 1] (I-BERT Eq. for i-erf)."""
    return torch.sign(z) * (GELU_A * (z.abs().clamp(max=-GELU_B) + GELU_B) ** 2 + 1.0)


def i_gelu(x: torch.Tensor) -> torch.Tensor:
    """Float i-GELU: x·½·[1 + L(x/√2)]."""
    return x * 0.5 * (1.0 + _erf_poly(x / math.sqrt(2.0)))


def h_gelu(x: torch.Tensor) -> torch.Tensor:
    """h-GELU: x·ReLU6(1.702·x + 3)/6."""
    return x * torch.clamp(1.702 * x + 3.0, 0.0, 6.0) / 6.0


def sigmoid_gelu(x: torch.Tensor) -> torch.Tensor:
    """x·σ(1.702·x)."""
    return x * torch.sigmoid(1.702 * x)


def i_exp(x: torch.Tensor) -> torch.Tensor:
    """Float i-exp for x ≤ 0: L(p)·2^−z, z = ⌊−x/ln2⌋, p = x + z·ln2."""
    z = torch.floor(-x / LN2)
    p = x + z * LN2
    return (EXP_A * (p + EXP_B) ** 2 + EXP_C) * torch.exp2(-z)


def _floor_int(v: float | torch.Tensor) -> torch.Tensor:
    return torch.floor(torch.as_tensor(v, dtype=torch.float64)).to(torch.int64)


def quantize_int(x: torch.Tensor, scale: float) -> torch.Tensor:
    """q = round(x / S) as int64 (the INT32 input of I-BERT's non-linear kernels)."""
    return torch.round(x.double() / scale).to(torch.int64)


def i_poly_int(q: torch.Tensor, scale: float, a: float, b: float, c: float) -> tuple[torch.Tensor, float]:
    """I-POLY: integer (q + ⌊b/S⌋)² + ⌊c/(a·S²)⌋ with scale a·S² ≈ a·(q·S + b)² + c."""
    qb, qc = _floor_int(b / scale), _floor_int(c / (a * scale * scale))
    return (q + qb) ** 2 + qc, a * scale * scale


def i_gelu_int(q: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """Integer i-GELU of x = q·S (q int64): returns (q_out int64, S_out) with x_gelu ≈ q_out·S_out."""
    s_erf = scale / GELU_K
    qb = _floor_int(GELU_B / s_erf)
    sgn = torch.sign(q)
    q_abs = torch.minimum(q.abs(), -qb)
    q_l, s_l = i_poly_int(q_abs, s_erf, GELU_A, GELU_B, 1.0)
    q_l = torch.div(sgn * q_l, 2**ERF_SHIFT, rounding_mode="floor")
    s_l = s_l * 2**ERF_SHIFT
    q_one = _floor_int(1.0 / s_l)
    return q * (q_l + q_one), scale * s_l / 2


def i_exp_int(q: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """Integer i-exp of x = q·S ≤ 0 (q int64 ≤ 0): (q_out ≥ 0 int64, S_out) with exp(x) ≈ q_out·S_out."""
    q_ln2 = _floor_int(LN2 / scale)
    q = torch.maximum(q, -EXP_MAX_SHIFT * q_ln2)
    z = torch.div(-q, q_ln2, rounding_mode="floor")
    q_p = q + z * q_ln2
    q_l, s_l = i_poly_int(q_p, scale, EXP_A, EXP_B, EXP_C)
    return torch.bitwise_right_shift(q_l, z), s_l


def i_softmax_int(q: torch.Tensor, scale: float, dim: int = -1, out_bits: int = 8) -> tuple[torch.Tensor, float]:
    """Integer softmax of scores x = q·S along ``dim``: (q_out int64, 2^−out_bits)."""
    q = q - q.amax(dim=dim, keepdim=True)
    q_e, s_e = i_exp_int(q, scale)
    v = q_e.double() * s_e
    s16 = float(v.max()) / (2**15 - 1)
    q16 = torch.round(v / s16).to(torch.int64)
    factor = torch.div(torch.full_like(q16, 2**32), q16.sum(dim=dim, keepdim=True), rounding_mode="floor")
    return torch.div(q16 * factor, 2 ** (32 - out_bits), rounding_mode="floor"), 2.0**-out_bits


def bit_length(n: torch.Tensor) -> torch.Tensor:
    """Number of binary digits of n ≥ 0 (int64), 0 for n = 0."""
    shifts = torch.arange(63, dtype=torch.int64, device=n.device)
    return (torch.bitwise_right_shift(n.unsqueeze(-1), shifts) > 0).sum(-1)


def i_sqrt(n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """⌊√n⌋ of int64 n ≥ 0 by I-BERT's integer Newton iteration; also the per-element iteration count."""
    if (n < 0).any():
        raise ValueError("i_sqrt needs n >= 0")
    x = torch.bitwise_left_shift(torch.ones_like(n), (bit_length(n) + 1) // 2)
    iters = torch.zeros_like(n)
    active = n > 0
    while active.any():
        y = torch.div(x + torch.div(n, x, rounding_mode="floor"), 2, rounding_mode="floor")
        active = active & (y < x)
        x = torch.where(active, y, x)
        iters += active.long()
    return torch.where(n > 0, x, torch.zeros_like(x)), iters


def i_rsqrt_int(x: torch.Tensor, frac_bits: int = 10) -> torch.Tensor:
    """1/√x for x > 0 via i_sqrt and an integer division (our fixed point, for the error table):
    n = round(x·2^(2F)), r = i_sqrt(n) ≈ √x·2^F, result ⌊2^31/r⌋·2^(F−31). F = 10 keeps n < 2^31
    for x < 1024."""
    r, _ = i_sqrt(torch.round(x.double() * 4.0**frac_bits).to(torch.int64))
    return torch.div(torch.full_like(r, 2**31), r, rounding_mode="floor").double() * 2.0 ** (frac_bits - 31)


def i_layernorm_int(q: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Integer LayerNorm over the last dim of int64 q [..., C] (any input scale: it cancels),
    then the float affine: returns float64 [..., C]."""
    c = q.shape[-1]
    mean = torch.round(q.double().mean(-1, keepdim=True)).to(torch.int64)
    y = q - mean
    var = (y * y).sum(-1, keepdim=True)
    k = torch.clamp((bit_length(var) - 31 + 1) // 2, min=0)
    sigma = torch.bitwise_left_shift(i_sqrt(torch.bitwise_right_shift(var, 2 * k))[0], k).clamp(min=1)
    factor = torch.div(torch.full_like(sigma, 2**31), sigma, rounding_mode="floor")
    y_n = torch.div(y * factor, 2, rounding_mode="floor").double() * (math.sqrt(c) / 2**30)
    return y_n * weight.double() + bias.double()


class IGELU(nn.Module):
    """Float i-GELU as a module (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return i_gelu(x)


class ISoftmax(nn.Module):
    """i-exp + exact division softmax over ``dim`` (module docstring); ``scores`` any shape."""

    def forward(self, scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
        x = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
        x = (x - x.detach().amax(dim=dim, keepdim=True)).clamp(min=-EXP_MAX_SHIFT * LN2)
        e = i_exp(x)
        return (e / e.sum(dim=dim, keepdim=True)).to(scores.dtype)


class ILayerNorm(nn.Module):
    """I-BERT integer LayerNorm built from an ``nn.LayerNorm`` over the last dim (module docstring).
    γ, β are the *same* Parameter objects as the replaced module's; ε is not used (as I-BERT)."""

    def __init__(self, ln: nn.LayerNorm, bits: int = 22):
        super().__init__()
        if len(ln.normalized_shape) != 1:
            raise ValueError(f"ILayerNorm normalises the last dim only, got normalized_shape={ln.normalized_shape}")
        if not 2 <= bits <= 31:
            raise ValueError(f"ILayerNorm: bits must be in [2, 31], got {bits}")
        self.bits, self.weight, self.bias = bits, ln.weight, ln.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., C] → [..., C] (x's dtype)."""
        xd = x.detach().double()
        scale = xd.abs().amax(-1, keepdim=True).clamp(min=1e-30) / (2 ** (self.bits - 1) - 1)
        q = torch.round(xd / scale).to(torch.int64)
        c = x.shape[-1]
        w = self.weight if self.weight is not None else torch.ones(c, device=x.device)
        b = self.bias if self.bias is not None else torch.zeros(c, device=x.device)
        return i_layernorm_int(q, w.detach(), b.detach()).to(x.dtype)
