"""Optimizers and schedules (kdqat.optim, SPEC §6.1, §7.2) against hand-computed values.

BertAdam, per parameter tensor p with gradient g (float64 here, so the literals hold to 1e-12):
  g̃ = g · min(1, 1 / (‖g‖₂ + 1e-6))   (each tensor clipped on its own, max_grad_norm = 1)
  m = 0.9·m + 0.1·g̃ ;  v = 0.999·v + 0.001·g̃²   (no bias correction)
  p ← p − lr · (m / (√v + 1e-6) + wd·p)         (decoupled weight decay inside the update)
"""
from __future__ import annotations

import math

import pytest
import torch

from kdqat.optim import BertAdam, build_optimizer, linear_decay, no_decay, warmup_linear

LR, WD = 0.1, 0.01


def _two_params():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    q = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    opt = BertAdam([{"params": [p], "weight_decay": WD}, {"params": [q], "weight_decay": 0.0}], lr=LR)
    return p, q, opt


def _step(opt, p, q, gp, gq):
    p.grad = torch.tensor(gp, dtype=torch.float64)
    q.grad = torch.tensor(gq, dtype=torch.float64)
    opt.step()


def test_bertadam_first_step_by_hand():
    p, q, opt = _two_params()
    _step(opt, p, q, [3.0, 4.0], [0.5])
    # p: ‖g‖ = 5 -> g̃ = [3, 4] / 5.000001; m = 0.1·g̃; v = 0.001·g̃²
    k = 1 / (5 + 1e-6)
    m = torch.tensor([0.3 * k, 0.4 * k], dtype=torch.float64)
    v = torch.tensor([0.009 * k * k, 0.016 * k * k], dtype=torch.float64)
    assert torch.allclose(opt.state[p]["next_m"], m, rtol=1e-12, atol=0)
    assert torch.allclose(opt.state[p]["next_v"], v, rtol=1e-12, atol=0)
    # m/√v = 0.1/√0.001 = √10 up to ε: u0 = √10·(1 − ε/√v) + wd·1, p0 = 1 − 0.1·u0
    u0 = 0.1 / (math.sqrt(0.001) + 1e-6 / (3 * k)) + WD * 1.0
    u1 = 0.1 / (math.sqrt(0.001) + 1e-6 / (4 * k)) + WD * -2.0
    assert torch.allclose(p.detach(), torch.tensor([1 - LR * u0, -2 - LR * u1], dtype=torch.float64),
                          rtol=1e-12, atol=0)
    assert p.tolist() == pytest.approx([0.6827888997747977, -2.314215266508424], rel=1e-12)
    # q: ‖g‖ = 0.5 < 1 -> not clipped, although the GLOBAL norm (5.02) would have scaled it by 0.2
    assert opt.state[q]["next_m"].tolist() == pytest.approx([0.05], rel=1e-12)
    assert opt.state[q]["next_v"].tolist() == pytest.approx([0.00025], rel=1e-12)
    # no bias correction: the update is √10·lr ≈ 0.316, not lr·sign(g) = 0.1 as in Adam/AdamW
    assert q.tolist() == pytest.approx([0.5 - LR * 0.05 / (math.sqrt(0.00025) + 1e-6)], rel=1e-12)
    assert q.tolist() == pytest.approx([0.18379223271833123], rel=1e-12)


def test_bertadam_second_step_by_hand():
    p, q, opt = _two_params()
    _step(opt, p, q, [3.0, 4.0], [0.5])
    _step(opt, p, q, [0.5, -0.25], [-2.0])
    # p: ‖g2‖ = 0.559 < 1 -> unclipped; q: ‖g2‖ = 2 -> g̃ = −2/2.000001
    k = 1 / (5 + 1e-6)
    mp = [0.9 * 0.3 * k + 0.1 * 0.5, 0.9 * 0.4 * k + 0.1 * -0.25]
    vp = [0.999 * 0.009 * k * k + 0.001 * 0.25, 0.999 * 0.016 * k * k + 0.001 * 0.0625]
    assert opt.state[p]["next_m"].tolist() == pytest.approx(mp, rel=1e-12)
    assert opt.state[p]["next_v"].tolist() == pytest.approx(vp, rel=1e-12)
    assert mp == pytest.approx([0.10399998920000214, 0.046999985600002875], rel=1e-12)
    assert p.tolist() == pytest.approx([0.2609151625573729, -2.489302092766533], rel=1e-12)
    gq = -2.0 / (2 + 1e-6)
    mq, vq = 0.9 * 0.05 + 0.1 * gq, 0.999 * 0.00025 + 0.001 * gq * gq
    assert opt.state[q]["next_m"].tolist() == pytest.approx([mq], rel=1e-12)
    assert q.tolist() == pytest.approx([0.18379223271833123 - LR * mq / (math.sqrt(vq) + 1e-6)], rel=1e-12)
    assert q.tolist() == pytest.approx([0.3393668033157604], rel=1e-12)


def test_bertadam_skips_params_without_grad():
    p, q, opt = _two_params()
    p.grad = torch.tensor([1.0, 0.0], dtype=torch.float64)
    opt.step()
    assert q.tolist() == [0.5] and q not in opt.state


def test_warmup_linear_values():
    f = warmup_linear(0.1, 100)
    # p = step/100; p < 0.1: p/0.1; else (p − 1)/(0.1 − 1), floored at 0
    assert [f(s) for s in (0, 5, 10, 55, 100, 120)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.0], abs=1e-15)
    assert f(1) == pytest.approx(0.1) and f(91) == pytest.approx(0.1)
    assert warmup_linear(0.0, 10)(0) == 1.0   # no warm-up: starts at the full rate


def test_linear_decay_values():
    f = linear_decay(10, 2)
    assert [f(s) for s in (0, 1, 2, 6, 10, 12)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.0])
    assert linear_decay(4)(0) == 1.0 and linear_decay(4)(1) == 0.75


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(2, 1)
        self.LayerNorm = torch.nn.LayerNorm(1)
        with torch.no_grad():
            self.dense.weight.copy_(torch.tensor([[1.0, -1.0]]))
            self.dense.bias.fill_(0.5)


def test_no_decay_names():
    assert [no_decay(n) for n in ("dense.bias", "LayerNorm.weight", "ln_f.layer_norm.weight",
                                  "model.norm.weight", "dense.weight", "embeddings.word_embeddings.weight")] \
        == [True, True, True, True, False, False]


def test_build_bertadam_schedule_and_groups():
    m = _Tiny()
    opt, sched = build_optimizer(m, "bertadam", lr=1.0, weight_decay=0.01, t_total=20, warmup=0.1)
    assert isinstance(opt, BertAdam)
    decay = {id(p) for p in opt.param_groups[0]["params"]}
    assert decay == {id(m.dense.weight)} and opt.param_groups[0]["weight_decay"] == 0.01
    assert opt.param_groups[1]["weight_decay"] == 0.0 and len(opt.param_groups[1]["params"]) == 3
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 17 / 18])   # warm-up over 2 of 20 steps, then decay


def test_adamw_path_one_step_by_hand():
    m = _Tiny()
    opt, sched = build_optimizer(m, "adamw", lr=0.1, weight_decay=0.5, t_total=4, warmup=0.0)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["eps"] == 1e-8
    m.dense.weight.grad = torch.tensor([[2.0, -0.5]])   # not clipped by the optimizer (the loop clips)
    m.dense.bias.grad = torch.tensor([4.0])
    opt.step()
    sched.step()
    # bias-corrected first step: m̂ = g, v̂ = g² -> update lr·g/(|g| + 1e-8); decoupled decay p·(1 − lr·wd)
    w = torch.tensor([[1.0 * (1 - 0.05) - 0.1 * 2 / (2 + 1e-8), -1.0 * (1 - 0.05) + 0.1 * 0.5 / (0.5 + 1e-8)]])
    assert torch.allclose(m.dense.weight.detach(), w, rtol=1e-6, atol=0)
    assert m.dense.bias.item() == pytest.approx(0.5 - 0.1, rel=1e-6)    # bias: no weight decay
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 3 / 4)      # linear decay over t_total = 4


def test_adamw_warmup_steps_are_floored():
    opt, _ = build_optimizer(_Tiny(), "adamw", lr=1.0, weight_decay=0.0, t_total=10, warmup=0.25)
    assert opt.param_groups[0]["lr"] == 0.0   # floor(0.25·10) = 2 warm-up steps: starts at 0


def test_unknown_optimizer_names_valid_ones():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; valid: bertadam, adamw"):
        build_optimizer(_Tiny(), "sgd", 0.1, 0.0, 10)
