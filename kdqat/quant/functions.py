"""Fake-quantizers as autograd Functions (SPEC §2, §3).

Every quantizer returns a tensor of the input's shape and dtype holding the de-quantized values
(fake quantization). Backward is a straight-through estimator (STE); each Function saves only
what backward needs (a bool mask), never a float copy of its input.

Granularity of the weight quantizers is given by a 2-D *view* of the weight: ``rows`` of that
view share one scale. ``"tensor"`` views the weight as ``[1, numel]``; ``"row"`` as
``[shape[0], -1]``; ``"group"`` as ``[-1, group_size]``. Callers that need per-output-channel
scales for a ``[in, out]`` weight (GPT-2 ``Conv1D``) transpose before calling (see
``kdqat.quant.modules``).

This module imports nothing of the project (DESIGN.md: ``quant`` is a leaf).
"""
from __future__ import annotations

import torch

GRANULARITIES = ("tensor", "row", "group")


def rows_view(w: torch.Tensor, granularity: str, group_size: int = -1) -> torch.Tensor:
    """2-D view of ``w`` whose rows are the quantization groups (a view, no copy when contiguous)."""
    if granularity == "tensor":
        return w.reshape(1, -1)
    if granularity == "row":
        return w.reshape(w.shape[0], -1)
    if granularity == "group":
        if group_size <= 0 or w.numel() % group_size:
            raise ValueError(f"group_size={group_size} does not divide a weight of {w.numel()} elements")
        return w.reshape(-1, group_size)
    raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")


# --------------------------------------------------------------------------------------------
# Forward-only value functions (pure; used by the Functions below and by tests / analysis)
# --------------------------------------------------------------------------------------------

def twn_values(w2d: torch.Tensor, threshold: float = 0.7) -> torch.Tensor:
    """TWN ternary values of a 2-D view, one (Δ, α) per row (SPEC §2.1).

    Δ = threshold·mean|W| over the row; mask = |W| > Δ; α = Σ|W|·mask / Σmask;
    Q = α·sign(W)·mask ∈ {−α, 0, +α}. A row with no survivor (e.g. an all-zero padding
    embedding row) gets α = 0 instead of the official code's NaN (DESIGN.md).
    """
    a = w2d.abs()
    delta = threshold * a.mean(dim=1, keepdim=True)
    mask = a > delta
    count = mask.sum(dim=1, keepdim=True)
    alpha = (a * mask).sum(dim=1, keepdim=True) / count.clamp(min=1)
    return alpha * torch.sign(w2d) * mask


def binary_values(w2d: torch.Tensor) -> torch.Tensor:
    """Binary values sign(W)·mean|W| per row of the view (sign(0) taken as +1)."""
    alpha = w2d.abs().mean(dim=1, keepdim=True)
    return torch.where(w2d >= 0, alpha, -alpha)


def sym_values(x: torch.Tensor, bits: int, clip: float | None) -> torch.Tensor:
    """Symmetric uniform n-bit with a fixed clip and a dynamic max-abs scale over the whole tensor (SPEC §3.1).

    x ← clamp(x, ±clip); s = (2^(b−1)−1)/max|x|; Q = round(x·s)/s. An all-zero input stays zero.
    """
    if clip is not None:
        x = x.clamp(-clip, clip)
    levels = 2 ** (bits - 1) - 1
    m = x.detach().abs().amax()
    scale = levels / torch.where(m > 0, m, torch.ones_like(m))
    return torch.round(x * scale) / scale


def asym_values(w2d: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric min–max n-bit per row of the view, with zero point (SPEC §2.4, TSLD W4).

    scale = max(max−min, 1e-5)/(2^b−1); zero = clamp(−round(min/scale), 0, 2^b−1);
    Q = (clamp(round(W/scale)+zero, 0, 2^b−1) − zero)·scale  → at most 2^b levels per row.
    """
    qmax = 2**bits - 1
    lo = w2d.amin(dim=1, keepdim=True)
    hi = w2d.amax(dim=1, keepdim=True)
    scale = (hi - lo).clamp(min=1e-5) / qmax
    zero = torch.clamp(-torch.round(lo / scale), 0, qmax)
    return (torch.clamp(torch.round(w2d / scale) + zero, 0, qmax) - zero) * scale


# --------------------------------------------------------------------------------------------
# Autograd Functions
# --------------------------------------------------------------------------------------------

class _WeightSTE(torch.autograd.Function):
    """Weight fake-quant with STE. ``clip`` (if given) clamps the latent weight first and zeroes
    the gradient where |W| >= clip (encoder protocol, SPEC §2.1); ``clip=None`` is the identity
    STE (decoder protocol, SPEC §2.4)."""

    @staticmethod
    def forward(ctx, w, method, bits, granularity, group_size, threshold, clip):
        wc = w if clip is None else w.clamp(-clip, clip)
        v = rows_view(wc, granularity, group_size)
        if method == "twn":
            q = twn_values(v, threshold)
        elif method == "binary":
            q = binary_values(v)
        elif method == "asym":
            q = asym_values(v, bits)
        elif method == "sym":
            q = sym_values(v, bits, None)  # already clamped above; max-abs over the whole tensor
        else:  # pragma: no cover - guarded by the spec validation
            raise ValueError(method)
        if clip is not None:
            ctx.save_for_backward(w.abs() < clip)
        ctx.clipped = clip is not None
        return q.reshape(w.shape)

    @staticmethod
    def backward(ctx, g):
        if ctx.clipped:
            (keep,) = ctx.saved_tensors
            g = g * keep
        return g, None, None, None, None, None, None


def quantize_weight(w: torch.Tensor, method: str = "twn", bits: int = 2, granularity: str = "tensor",
                    group_size: int = -1, threshold: float = 0.7, clip: float | None = None) -> torch.Tensor:
    """Fake-quantize a weight tensor with STE; see ``_WeightSTE``. ``sym`` is always per tensor."""
    if method == "sym":
        granularity = "tensor"
    return _WeightSTE.apply(w, method, bits, granularity, group_size, threshold, clip)


class _ActSTE(torch.autograd.Function):
    """Symmetric n-bit activation fake-quant (SPEC §3.1); STE zero where the unclipped |x| >= clip."""

    @staticmethod
    def forward(ctx, x, bits, clip):
        if clip is not None:
            ctx.save_for_backward((x < clip) & (x > -clip))
        ctx.clipped = clip is not None
        return sym_values(x, bits, clip)

    @staticmethod
    def backward(ctx, g):
        if ctx.clipped:
            (keep,) = ctx.saved_tensors
            g = g * keep
        return g, None, None


def quantize_activation(x: torch.Tensor, bits: int = 8, clip: float | None = 2.5) -> torch.Tensor:
    """Encoder A8 quantizer: clamp to ±clip, dynamic per-tensor max-abs scale, round (SPEC §3.1)."""
    return _ActSTE.apply(x, bits, clip)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() with an identity gradient."""
    return x + (torch.round(x) - x).detach()


def learned_scale_ternary(w: torch.Tensor, gamma: torch.Tensor, granularity: str = "row") -> torch.Tensor:
    """Learned-scale ternary (TSLD ``learned_scale`` / PACT+ option, SPEC §2.4).

    c = γ·mean|W| (per row of ``w`` or per tensor; γ has shape [rows, 1] or [1, 1]);
    Q = c·round_ste(clamp(W, −c, c)/c) ∈ {−c, 0, c}. Gradients reach γ through c and W through
    the clamp (zero outside ±c) with an identity round. A row with c = 0 (all-zero row) gives Q = 0
    instead of 0/0 = NaN.
    """
    v = rows_view(w, granularity)
    c = gamma * v.detach().abs().mean(dim=1, keepdim=True)
    u = torch.clamp(v, -c, c) / torch.where(c != 0, c, torch.ones_like(c))
    return (c * round_ste(u)).reshape(w.shape)


def ternary(w: torch.Tensor, granularity: str = "tensor", threshold: float = 0.7) -> torch.Tensor:
    """Public TWN ternary values (forward only, no clip): ``granularity`` "tensor" or "row"."""
    if granularity not in ("tensor", "row"):
        raise ValueError(f"ternary(): granularity must be 'tensor' or 'row', got {granularity!r}")
    with torch.no_grad():
        return twn_values(rows_view(w, granularity), threshold).reshape(w.shape)
