"""The one attention function registered with transformers' ``AttentionInterface`` (SPEC §1.3, §3.1, §5.1).

It computes eager attention exactly as HF's eager functions of BERT/RoBERTa, GPT-2, OPT and LLaMA do
(same ops in the same order, so float32 results are bitwise equal to ``attn_implementation="eager"``),
and in between it records the sites a bound ``Capture`` asked for, applies the student-only A8
quantizer and the teacher substitutions of TI-M / TI-C. Masks for this implementation are built by
HF's ``eager_mask`` (additive float mask, ``finfo(dtype).min`` on masked keys), registered under the
same name, so "scores" are the scores HF eager adds its mask to.

Shapes: query ``[B,H,S,d_h]``; key/value ``[B,H_kv,S_k,d_h]`` (GQA: repeated to H heads first);
mask ``[B,1,S,S_k]`` or None; returns (context ``[B,S,H,d_h]``, weights ``[B,H,S,S_k]``) where the
weights are the probabilities multiplied with V, after dropout, before quantization (HF's eager
convention; under TI-C the student's own probabilities).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdqat.quant.functions import quantize_activation

NAME = "kdqat_capture"
_BOUND: dict = {}  # attention module -> (Capture, layer index)


def register() -> None:
    """Register the attention function and its mask builder under ``NAME`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, capture_attention)
    AttentionMaskInterface.register(NAME, eager_mask)


def bind(module, capture, layer: int) -> None:
    """Route ``module``'s calls of the registered function to ``capture`` as layer ``layer``."""
    if module in _BOUND:
        raise RuntimeError("this model is already under an active Capture (nesting is not supported)")
    _BOUND[module] = (capture, layer)


def unbind(module) -> None:
    _BOUND.pop(module, None)


def repeat_heads(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B,H_kv,S,d] -> [B,H_kv·n_rep,S,d], each KV head repeated n_rep times in place (GQA)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """``AttentionInterface`` entry point: eager attention plus the bound Capture's work (if any)."""
    cap, layer = _BOUND.get(module, (None, -1))
    return attend(module, query, key, value, attention_mask, scaling, dropout, cap, layer)


def attend(module, q, k, v, mask, scaling, dropout, cap=None, layer: int = -1):
    """Eager attention with capture (SPEC §1.3 outputs 2, 4 and blk[0]; §3.1; §5.1).

    scores = (Q·Kᵀ)·scaling + mask;  probs = softmax(scores) (or ``cap.softmax_fn``), computed in
    float32 and cast back to Q's dtype; ctx = quant8(dropout(P))·V with P = probs, or the teacher's
    probabilities under TI-M; under TI-C ctx is the teacher's context. With A8, Q, K, V are
    quantized before use and the probabilities after dropout (never the recorded probs).
    """
    if scaling is None:
        scaling = q.size(-1) ** -0.5
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_heads(k, n_rep), repeat_heads(v, n_rep)
    bits = cap.act_quant_bits if cap is not None else None
    mode = cap.mode_at(layer) if cap is not None else None
    if bits:
        clip = cap.act_quant_clip
        q, k, v = (quantize_activation(t, bits, clip) for t in (q, k, v))
    put = cap.put if cap is not None else _discard
    put("q", q), put("k", k), put("v", v)

    scores = torch.matmul(q, k.transpose(2, 3)) * scaling
    if mask is not None:
        scores = scores + mask
    if cap is not None and cap.softmax_fn is not None:
        probs = cap.softmax_fn(scores)
    else:
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    put("scores", scores), put("probs", probs)

    if mode == "C":
        ctx = cap.teacher_tensor("context", layer, (*probs.shape[:3], v.shape[-1]), v.dtype)
        weights = probs
    else:
        p = cap.teacher_tensor("probs", layer, probs.shape, probs.dtype) if mode == "M" else probs
        weights = p = F.dropout(p, p=dropout, training=module.training)
        if bits:
            p = quantize_activation(p, bits, clip)
        ctx = torch.matmul(p, v)
    put("context", ctx)
    return ctx.transpose(1, 2).contiguous(), weights


def _discard(site, tensor):
    return None
