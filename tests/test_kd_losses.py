"""Every loss of kdqat.kd.losses against arithmetic written out in plain Python loops (SPEC §4).

Tensors are float64 so the hand values (Python floats) match to ~1e-12.
"""
import math

import pytest
import torch

from kdqat.kd import losses as L

F64 = torch.float64
MIN32 = torch.finfo(torch.float32).min


def _softmax(row):
    m = max(row)
    e = [math.exp(x - m) for x in row]
    return [x / sum(e) for x in e]


def _log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _close(value, expected, tol=1e-12):
    assert value.dim() == 0
    assert abs(value.item() - expected) <= tol * max(1.0, abs(expected)), (value.item(), expected)


# ------------------------------------------------------------------------------ encoder terms

ZS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
ZT = [[0.5, 0.5, 2.0], [1.0, 0.0, -1.0]]


def test_soft_cross_entropy_both_reductions():
    per_b = [sum(-pt * ls for pt, ls in zip(_softmax(t), _log_softmax(s))) for s, t in zip(ZS, ZT)]
    zs, zt = torch.tensor(ZS, dtype=F64), torch.tensor(ZT, dtype=F64)
    _close(L.soft_cross_entropy(zs, zt), sum(per_b) / 2)                    # P1/P2
    _close(L.soft_cross_entropy(zs, zt, reduction="mean"), sum(per_b) / 6)  # TernaryBERT: /(B*C)
    with pytest.raises(ValueError, match="sum_classes, mean"):
        L.soft_cross_entropy(zs, zt, reduction="sum")


def test_gt_cross_entropy_and_regression():
    zs, y = torch.tensor(ZS, dtype=F64), torch.tensor([2, 0])
    nll = [-_log_softmax(ZS[0])[2], -_log_softmax(ZS[1])[0]]
    _close(L.gt_cross_entropy(zs, y, "sum"), nll[0] + nll[1])
    _close(L.gt_cross_entropy(zs, y, "mean"), (nll[0] + nll[1]) / 2)
    with pytest.raises(ValueError, match="mean, sum"):
        L.gt_cross_entropy(zs, y, "none")
    s, t, lab = [[0.5], [2.0], [-1.0]], [[1.0], [1.5], [0.0]], [0.2, 3.0, -2.0]
    s_t = torch.tensor(s, dtype=F64)
    _close(L.pred_mse(s_t, torch.tensor(t, dtype=F64)), sum((a[0] - b[0]) ** 2 for a, b in zip(s, t)) / 3)
    _close(L.gt_regression_mse(s_t, torch.tensor(lab, dtype=F64)), sum((a[0] - b) ** 2 for a, b in zip(s, lab)) / 3)


def _key_masked(raw, lengths, mask_value):
    """[B,H,S,S] scores + additive key mask (mask_value on keys j >= s_b), like BERT."""
    out = raw.clone()
    for b, n in enumerate(lengths):
        out[b, :, :, n:] += mask_value
    return out


@pytest.mark.parametrize("mask_value", [-10000.0, MIN32])   # official code / HF transformers 5
def test_attention_score_mse_zeroes_masked_keys_keeps_padded_rows(mask_value):
    lengths = [3, 2]
    t_raw, s_raw = _rand(2, 1, 3, 3, seed=1), _rand(2, 1, 3, 3, seed=2)
    t_raw[0, 0, 1, 1] = -100.0       # exactly -100 at a real cell: zeroed too (<=)
    s_raw[0, 0, 1, 2] = -99.0        # kept
    t, s = _key_masked(t_raw, lengths, mask_value), _key_masked(s_raw, lengths, mask_value)
    tl, sl = t.tolist(), s.tolist()
    total = 0.0
    for b in range(2):
        for i in range(3):
            for j in range(3):
                a = tl[b][0][i][j] if tl[b][0][i][j] > -100 else 0.0
                c = sl[b][0][i][j] if sl[b][0][i][j] > -100 else 0.0
                total += (a - c) ** 2
    _close(L.attention_score_mse(t, s), total / 18)     # padded query row 2 of b=1 counted


def _probs(B, H, S, seed):
    return torch.softmax(_rand(B, H, S, S, seed=seed), dim=-1)


def test_attention_map_kl_masked_rows_cols_and_clamp():
    lengths = [3, 2]
    pt, ps = _probs(2, 2, 3, 3), _probs(2, 2, 3, 4)
    pt[0, 1, 0, 2] = 0.0             # clamped to 1e-8 on the teacher side
    ps[1, 0, 1, 0] = 0.0             # clamped to 1e-8 on the student side (real cell)
    tl, sl = pt.tolist(), ps.tolist()
    kls = []
    for b in range(2):
        for h in range(2):
            n = lengths[b]
            acc = 0.0
            for i in range(n):
                for j in range(n):
                    a, c = max(tl[b][h][i][j], 1e-8), max(sl[b][h][i][j], 1e-8)
                    acc += a * (math.log(a) - math.log(c))
            kls.append(acc / n)
    lens = torch.tensor(lengths)
    value = L.attention_map_kl(pt, ps, lens)
    _close(value, sum(kls) / 4)
    # padded query row / key column of example 1 take no part (bitwise)
    pt2, ps2 = pt.clone(), ps.clone()
    pt2[1, :, 2, :], ps2[1, :, :, 2] = 0.7, 0.0
    assert torch.equal(L.attention_map_kl(pt2, ps2, lens), value)


def test_plain_mses_include_padding():
    t, s = _rand(2, 3, 4, seed=5), _rand(2, 3, 4, seed=6)
    total = sum((a - c) ** 2 for a, c in zip(t.flatten().tolist(), s.flatten().tolist()))
    _close(L.hidden_mse(t, s), total / 24)
    _close(L.attention_output_mse(t, s), total / 24)
    ct, cs = t.reshape(2, 2, 3, 2), s.reshape(2, 2, 3, 2)     # [B,H,S,d_h]
    _close(L.context_mse(ct, cs), total / 24)
    with pytest.raises(ValueError, match="shape mismatch"):
        L.hidden_mse(t, s[:, :2])


# ------------------------------------------------------------------------------ decoder terms

def test_causal_lm_ce_ignores_minus_100():
    z = _rand(2, 3, 4, seed=7)
    y = torch.tensor([[1, 3, -100], [0, 2, 2]])
    zl, yl = z.tolist(), y.tolist()
    terms = [-_log_softmax(zl[b][n])[yl[b][n]] for b in range(2) for n in range(3) if yl[b][n] != -100]
    assert len(terms) == 5
    _close(L.causal_lm_ce(z, y), sum(terms) / 5)


def _token_ce(zs_row, zt_row):
    return sum(-p * ls for p, ls in zip(_softmax(zt_row), _log_softmax(zs_row)))


def test_logit_kd_causal_mean_over_all_positions_and_fp32_teacher():
    zs, zt = _rand(2, 2, 3, seed=8), _rand(2, 2, 3, seed=9)
    sl, tl = zs.tolist(), zt.tolist()
    hand = sum(_token_ce(sl[b][n], tl[b][n]) for b in range(2) for n in range(2)) / 4
    _close(L.logit_kd_causal(zs, zt), hand)
    s32, tb = zs.float(), zt.bfloat16()
    out = L.logit_kd_causal(s32, tb)
    assert out.dtype == torch.float32 and torch.equal(out, L.logit_kd_causal(s32, tb.float()))


def _hand_weights(zt, y, tau):
    w = []
    for b in range(len(y)):
        lt = [(-_log_softmax(zt[b][n])[y[b][n]] if y[b][n] != -100 else 0.0) for n in range(len(y[b]))]
        e = [math.exp(x / tau) for x in lt]
        w.append([x / sum(e) for x in e])
    return w


Y = [[1, -100, 3], [0, 2, 2]]


def test_tsld_token_weights_sum_to_one_and_ignored_token_gets_zero_ce():
    zt = _rand(2, 3, 4, seed=10).requires_grad_()
    y = torch.tensor(Y)
    for tau in (10.0, 1.0):
        w = L.tsld_token_weights(zt, y, tau)
        assert w.shape == (2, 3) and not w.requires_grad
        hand = _hand_weights(zt.tolist(), Y, tau)
        for b in range(2):
            for n in range(3):
                assert abs(w[b, n].item() - hand[b][n]) < 1e-12
        assert torch.allclose(w.sum(-1), torch.ones(2, dtype=F64), atol=1e-15, rtol=0)
    w = L.tsld_token_weights(zt, y).tolist()   # default tau = 10
    assert abs(w[0][1] - _hand_weights(zt.tolist(), Y, 10.0)[0][1]) < 1e-12


@pytest.mark.parametrize("variant", ["both", "up", "down"])
@pytest.mark.parametrize("batch", ["sum", "mean"])
def test_tsld_hand(variant, batch):
    zs, zt, y = _rand(2, 3, 4, seed=11), _rand(2, 3, 4, seed=12), torch.tensor(Y)
    sl, tl = zs.tolist(), zt.tolist()
    w = _hand_weights(tl, Y, 10.0)
    seqs = []
    for b in range(2):
        acc = 0.0
        for n in range(3):          # the -100 position still takes part in the KD sum
            wn = {"both": w[b][n], "up": max(w[b][n], 1 / 3), "down": min(w[b][n], 1 / 3)}[variant]
            acc += wn * _token_ce(sl[b][n], tl[b][n])
        seqs.append(acc)
    hand = sum(seqs) if batch == "sum" else sum(seqs) / 2
    _close(L.tsld(zs, zt, y, tau=10.0, batch_reduction=batch, variant=variant), hand)


def test_tsld_rejects_bad_options():
    z, y = _rand(1, 2, 3), torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="both, up, down"):
        L.tsld(z, z, y, variant="sideways")
    with pytest.raises(ValueError, match="sum, mean"):
        L.tsld(z, z, y, batch_reduction="max")


def _hf_causal_scores(raw, left_pad):
    """Scores as HF transformers 5 eager attention builds them: q·kᵀ·scale + mask, with
    finfo.min above the diagonal and on left-padded key columns."""
    out = raw.clone()
    T = raw.shape[-1]
    for b, pad in enumerate(left_pad):
        for i in range(T):
            for j in range(T):
                if j > i or j < pad:
                    out[b, :, i, j] += MIN32
    return out


def test_l2l_attention_mse_on_hf_style_scores():
    left_pad = [0, 1]
    t_raw, s_raw = _rand(2, 2, 3, 3, seed=13), _rand(2, 2, 3, 3, seed=14)
    t_raw[0, 0, 2, 1] = -1e5          # exactly -1e5 in the lower triangle: zeroed (<=)
    s_raw[0, 1, 1, 0] = -99999.0      # kept
    t, s = _hf_causal_scores(t_raw, left_pad), _hf_causal_scores(s_raw, left_pad)
    tl, sl = t.tolist(), s.tolist()
    total, count = 0.0, 0
    for b in range(2):
        for h in range(2):
            for i in range(3):
                for j in range(i + 1):
                    a = tl[b][h][i][j] if tl[b][h][i][j] > -1e5 else 0.0
                    c = sl[b][h][i][j] if sl[b][h][i][j] > -1e5 else 0.0
                    total += (a - c) ** 2
                    count += 1
    assert count == 2 * 2 * 6
    value = L.l2l_attention_mse(t, s)
    _close(value, total / count)
    s2 = s.clone()
    s2[..., 0, 2] = 123.0               # the upper triangle never counts, masked or not
    assert torch.equal(L.l2l_attention_mse(t, s2), value)
