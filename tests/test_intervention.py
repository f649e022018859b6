"""Teacher Intervention: schedules and two-step plan (SPEC §5.2, §5.3), and the substitutions and
stop-gradients of TI-M / TI-C / TI-O on a tiny BERT (SPEC §5.1, §9.14)."""
import copy
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from kdqat.capture import Capture
from kdqat.intervention import TwoStepPlan, step1_length, ti_mode
from kdqat.quant.functions import quantize_activation

TEACHER_SITES = ("probs", "context", "attn_output", "scores")


# ----------------------------------------------------------------------------- schedules
def test_grad_schedule_boundaries():
    assert [ti_mode("GRAD", i, 60) for i in (0, 9, 10, 19, 20, 59)] == ["O", "O", "C", "C", "M", "M"]
    modes = [ti_mode("GRAD", i, 120) for i in range(120)]
    assert modes == ["O"] * 20 + ["C"] * 20 + ["M"] * 80
    # real-valued thresholds: s=64 -> s/6 = 10.67, s/3 = 21.33
    assert [ti_mode("GRAD", i, 64) for i in (10, 11, 21, 22)] == ["O", "C", "C", "M"]


def test_inverted_single_and_none():
    assert [ti_mode("INVERTED", i, 60) for i in range(60)] == ["M"] * 20 + ["C"] * 20 + ["O"] * 20
    for m in ("M", "C", "O"):
        assert {ti_mode(m, i, 60) for i in range(60)} == {m}
    assert ti_mode("none", 3, 60) is None
    with pytest.raises(ValueError, match="unknown TI schedule"):
        ti_mode("GRADUAL", 0, 60)


def test_stochastic_is_seeded_and_uniform():
    a = [ti_mode("STOCHASTIC", i, 60, random.Random(5)) for i in range(3)]
    r1, r2 = random.Random(11), random.Random(11)
    seq1 = [ti_mode("STOCHASTIC", i, 60, r1) for i in range(3000)]
    assert seq1 == [ti_mode("STOCHASTIC", i, 60, r2) for i in range(3000)]
    assert len(set(a)) == 1  # fresh rng with the same seed -> same first draw each time
    counts = {m: seq1.count(m) for m in "OCM"}
    assert sum(counts.values()) == 3000 and all(900 < c < 1100 for c in counts.values())
    with pytest.raises(ValueError, match="rng"):
        ti_mode("STOCHASTIC", 0, 60)


def test_step1_length_and_two_step_plan():
    assert step1_length("CoLA") == 120 and step1_length("cola") == 120
    assert step1_length("sst-2") == 60 and step1_length("rte", "tiny-4l") == 120
    plan = TwoStepPlan(s=60, total=3 * 100)
    assert plan.step2_steps == 240
    assert plan.phase(0) == ("step1", "O") and plan.phase(15) == ("step1", "C")
    assert plan.phase(59) == ("step1", "M") and plan.phase(60) == ("step2", None)
    assert plan.local_step(59) == 59 and plan.local_step(60) == 0 and plan.local_step(299) == 239
    assert TwoStepPlan(60, 300, "O").phase(30) == ("step1", "O")
    with pytest.raises(ValueError):
        plan.phase(300)
    with pytest.raises(ValueError):
        TwoStepPlan(s=60, total=60)


# ----------------------------------------------------------------------------- substitutions
def _models(perturb=True):
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     vocab_size=100, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(cfg).eval()
    student = copy.deepcopy(teacher)
    if perturb:
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return teacher, student


X = {"input_ids": torch.tensor([[5, 17, 42, 8, 99, 3], [7, 7, 12, 64, 30, 2]])}


def _grads(mode, task=True, att=False, layers=None, teacher_ctx=torch.no_grad, act_bits=None):
    """One backward of task (sum of logits) and/or score-MSE loss under TI ``mode``."""
    teacher, student = _models()
    with Capture(teacher, record=TEACHER_SITES) as tc, \
            Capture(student, record=("scores",), act_quant_bits=act_bits) as sc:
        with teacher_ctx():
            teacher(**X)
        sc.intervene(mode, tc.records, layers=layers)
        logits = student(**X).logits
        loss = logits.sum() if task else 0.0
        if att:
            loss = loss + sum(F.mse_loss(a, b.clone()) for a, b in zip(sc.records["scores"], tc.records["scores"]))
        loss.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher never gets gradient
    return student


def _norm(student, li, name):
    lay = student.bert.encoder.layer[li]
    mod = {"q": lay.attention.self.query, "k": lay.attention.self.key, "v": lay.attention.self.value,
           "o": lay.attention.output.dense, "ffn": lay.intermediate.dense}[name]
    return 0.0 if mod.weight.grad is None else mod.weight.grad.abs().sum().item()


def _emb(student):
    g = student.bert.embeddings.word_embeddings.weight.grad
    return 0.0 if g is None else g.abs().sum().item()


def test_no_intervention_control_all_receive_gradient():
    s = _grads(None)
    assert all(_norm(s, li, n) > 0 for li in range(2) for n in ("q", "k", "v", "o", "ffn"))


def test_ti_o_gradients():
    s = _grads("O")
    assert all(_norm(s, li, n) == 0 for li in range(2) for n in ("q", "k", "v", "o"))
    assert all(_norm(s, li, "ffn") > 0 for li in range(2)) and _emb(s) > 0
    both, att = _grads("O", att=True), _grads("O", task=False, att=True)
    for li in range(2):
        assert _norm(both, li, "q") > 0 and _norm(both, li, "k") > 0
        assert _norm(both, li, "v") == 0 and _norm(both, li, "o") == 0
        for n in ("q", "k"):  # Q/K learn only from the score term
            lay_b, lay_a = both.bert.encoder.layer[li], att.bert.encoder.layer[li]
            gb = getattr(lay_b.attention.self, {"q": "query", "k": "key"}[n]).weight.grad
            assert torch.equal(gb, getattr(lay_a.attention.self, {"q": "query", "k": "key"}[n]).weight.grad)
    assert _emb(att) == 0  # detached Q/K inputs: the score term stops at the projections


def test_ti_m_gradients():
    s = _grads("M")
    assert all(_norm(s, li, n) == 0 for li in range(2) for n in ("q", "k"))
    assert all(_norm(s, li, n) > 0 for li in range(2) for n in ("v", "o", "ffn"))
    att = _grads("M", task=False, att=True)
    assert all(_norm(att, li, n) > 0 for li in range(2) for n in ("q", "k"))
    assert all(_norm(att, li, n) == 0 for li in range(2) for n in ("v", "o", "ffn")) and _emb(att) == 0


def test_ti_c_gradients_and_layer_selection():
    s = _grads("C")
    assert all(_norm(s, li, n) == 0 for li in range(2) for n in ("q", "k", "v"))
    assert all(_norm(s, li, "o") > 0 for li in range(2))
    sel = _grads("O", layers=[1])
    assert _norm(sel, 0, "v") > 0 and _norm(sel, 0, "q") > 0 and _norm(sel, 1, "v") == 0


def test_inference_mode_teacher_and_a8():
    s = _grads("M", teacher_ctx=torch.inference_mode, act_bits=8, att=True)
    assert _norm(s, 0, "v") > 0 and _norm(s, 0, "q") > 0


def test_substituted_values():
    teacher, student = _models()
    rec = ("hidden", "v", "probs", "context", "attn_output", "attn_sublayer")
    with Capture(teacher, record=TEACHER_SITES) as tc, Capture(student, record=rec, act_quant_bits=8) as sc:
        with torch.no_grad():
            teacher(**X)
        t = tc.records
        sc.intervene("M", t)
        student(**X)
        r = sc.records
        for li in range(2):
            assert not torch.equal(r["probs"][li], t["probs"][li])  # own probs recorded for the losses
            assert torch.equal(r["context"][li], torch.matmul(quantize_activation(t["probs"][li], 8, 2.5), r["v"][li]))
        sc.intervene("C", t)
        student(**X)
        r, lay = sc.records, student.bert.encoder.layer[1]
        assert torch.equal(r["context"][1], t["context"][1])
        flat = t["context"][1].transpose(1, 2).reshape(2, 6, 32)
        assert torch.equal(r["attn_output"][1], lay.attention.output.dense(flat))
        sc.intervene("O", t)
        student(**X)
        r, ln = sc.records, lay.attention.output.LayerNorm
        assert torch.equal(r["attn_output"][1], t["attn_output"][1])
        assert torch.equal(r["attn_sublayer"][1], ln(t["attn_output"][1] + r["hidden"][1]))
        sc.intervene(None, None)
        student(**X)
        assert not torch.equal(sc.records["attn_output"][1], t["attn_output"][1])


@pytest.mark.parametrize("mode", ["M", "C", "O"])
def test_identical_student_reproduces_teacher_bitwise(mode):
    teacher, student = _models(perturb=False)
    with Capture(teacher, record=TEACHER_SITES) as tc, Capture(student, record=("probs",)) as sc:
        with torch.no_grad():
            t_logits = teacher(**X).logits
        sc.intervene(mode, tc.records)
        assert torch.equal(student(**X).logits, t_logits)


def test_intervene_validation():
    teacher, student = _models()
    with Capture(student, record=("probs",)) as sc:
        with pytest.raises(ValueError, match="mode must be"):
            sc.intervene("X", {})
        with pytest.raises(ValueError, match="'probs'"):
            sc.intervene("M", {"context": []})
        sc.intervene("O", {"attn_output": []})
        with pytest.raises(RuntimeError, match="run the teacher first"):
            student(**X)


@pytest.mark.parametrize("mode,zero_cols", [("M", slice(0, 64)), ("C", slice(0, 96))])
def test_gpt2_fused_qkv_stop_gradient(mode, zero_cols):
    """GPT-2 c_attn ([in, 3D] = [Q|K|V] columns): TI-M cuts the task gradient of the Q and K
    columns only, TI-C of all three; the control run (no TI) reaches every column."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=16,
                     attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(cfg).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grads = {}
    for m in (None, mode):
        student.zero_grad(set_to_none=True)
        with Capture(teacher, record=("probs", "context")) as tc, Capture(student) as sc:
            with torch.no_grad():
                teacher(**X)
            sc.intervene(m, tc.records if m else None)
            student(**X).logits.sum().backward()
        g = student.transformer.h[1].attn.c_attn.weight.grad
        grads[m] = torch.zeros(96) if g is None else g.abs().sum(0)  # per output column
    assert (grads[None] > 0).all()
    assert (grads[mode][zero_cols] == 0).all() and (grads[mode][zero_cols.stop:] > 0).all()
