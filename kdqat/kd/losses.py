"""KD loss terms as pure functions of captured tensors (SPEC §4, quirks §9.4/5/8/20/21/26/28).

Every function returns a 0-dim tensor (differentiable w.r.t. the student arguments) and computes
ONE term for ONE layer / one pair; summing over layers and weighting is `kdqat.kd.methods`' job.
"MSE" means the mean over *all* elements (``torch.nn.MSELoss()`` default), padding included.

Shapes: ``B`` batch, ``H`` heads, ``S`` padded encoder length, ``T``/``N`` decoder positions,
``D`` hidden size, ``d_h`` head size, ``C`` classes, ``V`` vocabulary.

Decoder functions take logits and labels that are ALREADY ALIGNED: position ``n`` of the logits
predicts ``labels[:, n]`` (HF's shift convention: the caller passes ``logits[:, :-1]`` and
``input_ids[:, 1:]``, SPEC §4.2). Label ``-100`` marks an ignored position.

This module imports nothing of the project (DESIGN.md: ``kd/losses`` is a leaf).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
ENCODER_SCORE_FLOOR = -100.0   # SPEC §4.1(iii): entries <= -1e2 (masked keys) are zeroed
DECODER_SCORE_FLOOR = -1e5     # SPEC §4.2 L2L: entries <= -1e5 (masked keys) are zeroed
PROB_CLAMP = 1e-8              # SPEC §4.1(iv)
TSLD_VARIANTS = ("both", "up", "down")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half/bfloat16 -> float32 (the official ``.float()``); float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _zero_masked(x: torch.Tensor, floor: float) -> torch.Tensor:
    """Entries ``<= floor`` (additively masked keys) set to 0."""
    return torch.where(x <= floor, torch.zeros_like(x), x)


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    _same_shape(a, b)
    return F.mse_loss(a, b)


# ------------------------------------------------------------------ encoder terms (SPEC §4.1)

def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       reduction: str = "sum_classes") -> torch.Tensor:
    """L_pred for classification, temperature 1 (SPEC §4.1(i), §9.4).

    logits ``[B, C]``; per element ``−softmax(z^T)_c · log_softmax(z^S)_c``.
    ``"sum_classes"``: sum over C, mean over B (P1/P2). ``"mean"``: mean over B×C (TernaryBERT
    original; smaller by a factor C).
    """
    ce = -F.softmax(teacher_logits, dim=-1) * F.log_softmax(student_logits, dim=-1)
    if reduction == "sum_classes":
        return ce.sum(dim=-1).mean()
    if reduction == "mean":
        return ce.mean()
    raise ValueError(f"unknown soft-CE reduction {reduction!r}; valid: sum_classes, mean")


def pred_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """L_pred for regression (STS-B, ``num_labels == 1``): MSE(z^S, z^T), ``[B, 1]`` -> mean over B."""
    return _mse(student_logits.reshape(-1), teacher_logits.reshape(-1))


def hidden_mse(teacher_hidden: torch.Tensor, student_hidden: torch.Tensor) -> torch.Tensor:
    """One L_rep pair (SPEC §4.1(ii)): ``[B, S, D]`` -> MSE over B·S·D, padding included."""
    return _mse(student_hidden, teacher_hidden)


def attention_score_mse(teacher_scores: torch.Tensor, student_scores: torch.Tensor) -> torch.Tensor:
    """One layer of TernaryBERT's L_att (SPEC §4.1(iii)).

    scores ``[B, H, S, S]`` pre-softmax with the additive key mask. In each tensor separately,
    entries ``<= -100`` (masked keys: -1e4 in the official code, finfo.min in HF) are set to 0;
    then MSE over all B·H·S·S entries, padded query rows included.
    """
    floor = ENCODER_SCORE_FLOOR
    return _mse(_zero_masked(student_scores, floor), _zero_masked(teacher_scores, floor))


def attention_map_kl(teacher_probs: torch.Tensor, student_probs: torch.Tensor,
                     lengths: torch.Tensor) -> torch.Tensor:
    """One layer of P1's L_map = KL(P^T ‖ P^S) (SPEC §4.1(iv)).

    probs ``[B, H, S, S]`` (softmax before dropout), ``lengths`` ``[B]`` real token counts s_b.
    Both are clamped to ``>= 1e-8``; cells with ``i < s_b`` and ``j < s_b`` are kept;
    ``KL_{b,h} = (1/s_b) Σ_{i,j<s_b} P^T (log P^T − log P^S)``; result = mean over (b, h).
    """
    _same_shape(teacher_probs, student_probs)
    B, _, S, _ = teacher_probs.shape
    lengths = lengths.to(teacher_probs.device).reshape(B)
    pt = teacher_probs.clamp(min=PROB_CLAMP)
    ps = student_probs.clamp(min=PROB_CLAMP)
    real = torch.arange(S, device=pt.device)[None, :] < lengths[:, None]           # [B, S]
    mask = (real[:, :, None] & real[:, None, :])[:, None]                          # [B, 1, S, S]
    cell = torch.where(mask, pt * (pt.log() - ps.log()), torch.zeros_like(pt))
    kl_bh = cell.sum(dim=(-1, -2)) / lengths[:, None].to(pt.dtype)                 # [B, H]
    return kl_bh.mean()


def attention_output_mse(teacher_out: torch.Tensor, student_out: torch.Tensor) -> torch.Tensor:
    """One layer of P1's L_out (SPEC §4.1(v)): ``[B, S, D]`` attention sub-layer output, post-LN
    (``blk[1]``) or pre-LN (``blk[2]``) as the caller picks; MSE over B·S·D, padding included."""
    return _mse(student_out, teacher_out)


def context_mse(teacher_ctx: torch.Tensor, student_ctx: torch.Tensor) -> torch.Tensor:
    """One layer of L_ctx (SPEC §4.1(vi)): per-head context P·V ``[B, H, S, d_h]``; MSE over all."""
    return _mse(student_ctx, teacher_ctx)


def gt_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                     reduction: str = "mean") -> torch.Tensor:
    """Classification L_gt (SPEC §4.1(vii), §9.8): logits ``[B, C]``, labels ``[B]`` int.

    ``"sum"``: ``nll(log_softmax(z^S), y)`` summed over B (P1 code). ``"mean"``: mean over B (P2).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown GT reduction {reduction!r}; valid: mean, sum")
    return F.nll_loss(F.log_softmax(logits, dim=-1), labels.long(), reduction=reduction)


def gt_regression_mse(student_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Regression L_gt: MSE over B between ``[B, 1]`` predictions and ``target``.

    The official P1/P2 code passes the TEACHER logits as target (quirk, SPEC §9.8); pass the
    float labels ``[B]`` for a true ground-truth loss.
    """
    return _mse(student_logits.reshape(-1), target.reshape(-1).to(student_logits.dtype))


# ------------------------------------------------------------------ decoder terms (SPEC §4.2)

def causal_lm_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HF causal-LM cross-entropy L_GT on ALIGNED tensors (SPEC §4.2).

    logits ``[B, N, V]`` (half/bf16 cast to fp32 like HF), labels ``[B, N]``; mean over the
    positions whose label is not -100. Equals HF's ``model(input_ids, labels=labels).loss`` when
    called with ``logits[:, :-1]`` and ``labels[:, 1:]``.
    """
    return F.cross_entropy(_upcast(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="mean")


def _token_soft_ce(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``[B, N, V]`` x2 -> ``[B, N]``: Σ_v −p^T log p^S, teacher in fp32, student log-softmax in its
    own dtype (the product promotes to fp32, as in the official code)."""
    p_t = F.softmax(_upcast(teacher_logits), dim=-1)
    return (-p_t * F.log_softmax(student_logits, dim=-1)).sum(dim=-1)


def logit_kd_causal(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """L_logit (SPEC §4.2): aligned ``[B, N, V]``; mean over all B·N positions (labels ignored,
    -100 positions included) of Σ_v −p^T log p^S, T = 1, half/bf16 teacher cast to fp32."""
    return _token_soft_ce(student_logits, teacher_logits).mean()


def tsld_token_weights(teacher_logits: torch.Tensor, labels: torch.Tensor,
                       tau: float = 10.0) -> torch.Tensor:
    """TSLD token scale (SPEC §4.2 steps 1-2, §9.28): ``[B,N,V]``, ``[B,N]`` -> ``[B,N]``, detached.

    ``ℓ^T_{b,n} = −log p^T_{b,n,y}`` (at least fp32; 0 where the label is -100);
    ``w_b = softmax_n(ℓ^T_b / τ)`` over the N positions of each sequence, so each row sums to 1
    (ignored positions included).
    """
    t = _upcast(teacher_logits.detach())
    lt = F.cross_entropy(t.reshape(-1, t.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                         reduction="none").reshape(labels.shape)
    return F.softmax(lt / tau, dim=-1)


def tsld(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
         tau: float = 10.0, batch_reduction: str = "sum", variant: str = "both") -> torch.Tensor:
    """L_TSLD (SPEC §4.2 step 3, §8.3 end, §9.20/21/28) on aligned ``[B, N, V]`` / ``[B, N]``.

    ``Σ_n w_{b,n} · Σ_v −p^T log p^S`` per sequence, then ``"sum"`` over B (official) or
    ``"mean"``. ``variant``: ``"both"`` w; ``"up"`` max(w, 1/N); ``"down"`` min(w, 1/N).
    """
    if batch_reduction not in ("sum", "mean"):
        raise ValueError(f"unknown TSLD batch reduction {batch_reduction!r}; valid: sum, mean")
    if variant not in TSLD_VARIANTS:
        raise ValueError(f"unknown TSLD variant {variant!r}; valid: {', '.join(TSLD_VARIANTS)}")
    w = tsld_token_weights(teacher_logits, labels, tau)
    n = w.shape[-1]
    if variant == "up":
        w = w.clamp(min=1.0 / n)
    elif variant == "down":
        w = w.clamp(max=1.0 / n)
    per_seq = (w * _token_soft_ce(student_logits, teacher_logits)).sum(dim=-1)    # [B]
    return per_seq.sum() if batch_reduction == "sum" else per_seq.mean()


def l2l_attention_mse(teacher_scores: torch.Tensor, student_scores: torch.Tensor) -> torch.Tensor:
    """One layer of the L2L attention term (SPEC §4.2, §9.26).

    scores ``[B, H, T, T]`` pre-softmax incl. HF's additive mask (finfo.min). In each tensor,
    entries ``<= -1e5`` are set to 0; the squared difference is averaged over the causal lower
    triangle incl. the diagonal, over all b, h: ``B·H·T(T+1)/2`` entries (zeroed ones count).
    Stock HF returns probabilities instead of scores; the formula is applied to whatever it gets.
    """
    _same_shape(teacher_scores, student_scores)
    t = _zero_masked(teacher_scores, DECODER_SCORE_FLOOR)
    s = _zero_masked(student_scores, DECODER_SCORE_FLOOR)
    T = t.shape[-1]
    tril = torch.ones(T, T, dtype=torch.bool, device=t.device).tril()
    return ((s - t) ** 2)[..., tril].mean()
