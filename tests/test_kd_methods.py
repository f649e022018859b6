"""kdqat.kd.methods: every recipe equals its weighted sum of loss terms; switches; errors.

The terms themselves are checked against hand arithmetic in test_kd_losses.py.
"""
import pytest
import torch

from kdqat.kd import losses as L
from kdqat.kd.methods import METHODS, build_method, method_names, validate_method

F64 = torch.float64
NL, B, H, S, D = 2, 2, 2, 3, 4
LENGTHS = torch.tensor([3, 2])


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _encoder_capture(seed, num_labels=3):
    g = _g(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=F64)  # noqa: E731
    scores = [r(B, H, S, S) for _ in range(NL)]
    for sc in scores:
        sc[1, :, :, 2] += -10000.0                       # padded key of example 1
    return {"logits": r(B, num_labels), "hidden": [r(B, S, D) for _ in range(NL + 1)],
            "scores": scores, "probs": [torch.softmax(sc, -1) for sc in scores],
            "attn_sublayer": [r(B, S, D) for _ in range(NL)],
            "attn_output": [r(B, S, D) for _ in range(NL)],
            "context": [r(B, H, S, 2) for _ in range(NL)]}


STU, TEA = _encoder_capture(1), _encoder_capture(2)
BATCH = {"labels": torch.tensor([2, 0]), "lengths": LENGTHS}


def _sum(fn, site, *extra, s=STU, t=TEA):
    out = None
    for a, b in zip(t[site], s[site]):
        v = fn(a, b, *extra)
        out = v if out is None else out + v
    return out


PRED = L.soft_cross_entropy(STU["logits"], TEA["logits"])
REP = _sum(L.hidden_mse, "hidden")
ATT = _sum(L.attention_score_mse, "scores")
MAP = _sum(L.attention_map_kl, "probs", LENGTHS)
OUT = _sum(L.attention_output_mse, "attn_sublayer")


@pytest.mark.parametrize("name, terms, needs", [
    ("ternarybert", {"pred": PRED, "rep": REP, "att": ATT}, {"hidden", "scores"}),
    ("map", {"pred": PRED, "rep": REP, "map": MAP}, {"hidden", "probs"}),
    ("output", {"pred": PRED, "rep": REP, "out": OUT}, {"hidden", "attn_sublayer"}),
    ("map+output", {"pred": PRED, "rep": REP, "map": MAP, "out": OUT},
     {"hidden", "probs", "attn_sublayer"}),
    ("ti", {"pred": PRED, "rep": REP, "out": OUT, "att": ATT}, {"hidden", "scores", "attn_sublayer"}),
    ("gt", {"gt": L.gt_cross_entropy(STU["logits"], BATCH["labels"], "sum")}, set()),
])
def test_encoder_method_is_sum_of_terms(name, terms, needs):
    m = build_method(name)
    assert m.needs == frozenset(needs)
    total, logged = m(STU, TEA, BATCH)
    expected = None
    for v in terms.values():
        expected = v if expected is None else expected + v
    assert torch.equal(total, expected)
    assert logged == {k: v.item() for k, v in terms.items()}
    assert m.weights == {k: 1.0 for k in terms}


def test_gradients_reach_student_sites_only():
    grad = lambda x: x.clone().requires_grad_()  # noqa: E731
    stu = {k: ([grad(x) for x in v] if isinstance(v, list) else grad(v)) for k, v in STU.items()}
    total, _ = build_method("map+output")(stu, TEA, BATCH)
    total.backward()
    assert stu["logits"].grad.abs().sum() > 0
    for site in ("hidden", "probs", "attn_sublayer"):
        assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in stu[site])
    for site in ("scores", "attn_output", "context"):                      # not read by map+output
        assert all(x.grad is None for x in stu[site])


@pytest.mark.parametrize("form, gamma", [(1, 0.3), (2, 0.3), (1, 1.0)])
def test_map_output_forms(form, gamma):
    m = build_method("map+output", {"gamma": gamma, "form": form})
    total, logged = m(STU, TEA, BATCH)
    c_map, c_out = (1.0, gamma) if form == 1 else (gamma, 1.0)
    assert m.weights == {"pred": 1.0, "rep": 1.0, "map": c_map, "out": c_out}
    assert torch.equal(total, PRED + REP + c_map * MAP + c_out * OUT)
    assert logged["map"] == MAP.item() and logged["out"] == OUT.item()     # logged unweighted
    assert build_method("map+output").params == {"gamma": 1.0, "form": 1}
    assert type(build_method("map+output", {"gamma": 1}).params["gamma"]) is float   # TOML int -> 1.0


def test_encoder_protocol_switches():
    m = build_method("output", protocol={"output_site": "pre_ln", "soft_ce": "mean"})
    assert m.needs == frozenset({"hidden", "attn_output"})
    assert m.protocol == {"task_type": None, "soft_ce": "mean", "output_site": "pre_ln"}
    total, _ = m(STU, TEA, BATCH)
    pred_mean = L.soft_cross_entropy(STU["logits"], TEA["logits"], "mean")
    assert torch.allclose(pred_mean * 3, PRED, rtol=1e-14, atol=0)            # TernaryBERT: /num_labels
    assert torch.equal(total, pred_mean + REP + _sum(L.attention_output_mse, "attn_output"))
    gt_mean, _ = build_method("gt", protocol={"gt_reduction": "mean"})(STU, TEA, BATCH)
    gt_sum, _ = build_method("gt")(STU, TEA, BATCH)                          # P1 default: sum over B
    assert torch.allclose(gt_sum, 2 * gt_mean, rtol=1e-14, atol=0)


def test_whole_job_protocol_is_accepted_non_kd_switches_ignored():
    from kdqat.protocol import Protocol
    full = {**Protocol().resolved("encoder"), "task_type": "classification", "soft_ce": "mean"}
    m = build_method("ternarybert", protocol=full)
    assert m.protocol == {"task_type": "classification", "soft_ce": "mean"}
    assert build_method("ternarybert").protocol == {"task_type": None, "soft_ce": "sum_classes"}
    assert build_method("l2l+logit", protocol=Protocol().resolved("decoder")).protocol == {"l2l_attention": "scores"}


def test_map_lengths_fall_back_to_attention_mask():
    batch = {"labels": BATCH["labels"], "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    total, _ = build_method("map")(STU, TEA, batch)
    assert torch.equal(total, PRED + REP + MAP)


def test_regression_is_inferred_from_one_label():
    s, t = _encoder_capture(3, num_labels=1), _encoder_capture(4, num_labels=1)
    y = torch.tensor([0.5, 4.0], dtype=F64)
    total, logged = build_method("ternarybert")(s, t, {"labels": y, "lengths": LENGTHS})
    pred = L.pred_mse(s["logits"], t["logits"])
    assert logged["pred"] == pred.item()
    rep, att = _sum(L.hidden_mse, "hidden", s=s, t=t), _sum(L.attention_score_mse, "scores", s=s, t=t)
    assert torch.equal(total, pred + rep + att)
    quirk, _ = build_method("gt")(s, t, {"labels": y})                      # official: teacher MSE
    assert torch.equal(build_method("gt", protocol={"task_type": "regression"})(s, t, {"labels": y})[0], quirk)
    true_gt, _ = build_method("gt", protocol={"gt_regression": "labels"})(s, t, {"labels": y})
    assert torch.equal(quirk, pred)
    assert torch.equal(true_gt, L.gt_regression_mse(s["logits"], y))


def test_task_type_must_match_logits():
    with pytest.raises(ValueError, match="'regression' but the logits have 3 outputs"):
        build_method("ternarybert", protocol={"task_type": "regression"})(STU, TEA, BATCH)
    with pytest.raises(ValueError, match="'task_type'.*classification, regression"):
        build_method("gt", protocol={"task_type": "lm"})


def test_missing_capture_site_is_named():
    with pytest.raises(ValueError, match=r"needs student\['probs'\]"):
        build_method("map")({k: v for k, v in STU.items() if k != "probs"}, TEA, BATCH)


# ------------------------------------------------------------------------------ decoder methods

T, V = 5, 11


def _decoder_capture(seed):
    g = _g(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    causal = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)           # HF-style mask
    return {"logits": r(B, T, V), "hidden": [r(B, T, D) for _ in range(NL + 1)],
            "scores": [r(B, H, T, T) + causal for _ in range(NL)]}


DS, DT = _decoder_capture(5), _decoder_capture(6)
DLAB = torch.tensor([[1, 2, 3, 4, 5], [-100, -100, 7, 8, 9]])          # prompt tokens ignored
DB = {"labels": DLAB}
GT = L.causal_lm_ce(DS["logits"][:, :-1], DLAB[:, 1:])
LOGIT = L.logit_kd_causal(DS["logits"][:, :-1], DT["logits"][:, :-1])
TSLD = L.tsld(DS["logits"][:, :-1], DT["logits"][:, :-1], DLAB[:, 1:])


@pytest.mark.parametrize("name, terms, needs", [
    ("gt", {"gt": GT}, set()),
    ("logit", {"logit": LOGIT}, set()),
    ("logit+gt", {"gt": GT, "logit": LOGIT}, set()),
    ("l2l+logit", {"logit": LOGIT, "l2l_rep": _sum(L.hidden_mse, "hidden", s=DS, t=DT),
                   "l2l_att": _sum(L.l2l_attention_mse, "scores", s=DS, t=DT)}, {"hidden", "scores"}),
    ("tsld", {"gt": GT, "tsld": TSLD}, set()),
    ("tsld_only", {"tsld": TSLD}, set()),
])
def test_decoder_method_is_sum_of_terms(name, terms, needs):
    m = build_method(name)
    assert m.needs == frozenset(needs)
    total, logged = m(DS, DT, DB)
    expected = None
    for v in terms.values():
        expected = v if expected is None else expected + v
    assert torch.equal(total, expected)
    assert logged == {k: v.item() for k, v in terms.items()}


def test_l2l_on_probabilities_switch():
    ds = {**DS, "probs": [torch.softmax(x, -1) for x in DS["scores"]]}
    dt = {**DT, "probs": [torch.softmax(x, -1) for x in DT["scores"]]}
    m = build_method("l2l+logit", protocol={"l2l_attention": "probs"})
    assert m.needs == frozenset({"hidden", "probs"})
    expected = LOGIT + _sum(L.hidden_mse, "hidden", s=ds, t=dt) + _sum(L.l2l_attention_mse, "probs", s=ds, t=dt)
    assert torch.equal(m(ds, dt, DB)[0], expected)


def test_decoder_alignment_drops_last_position():
    ds2, dt2 = dict(DS), dict(DT)
    ds2["logits"], dt2["logits"] = DS["logits"].clone(), DT["logits"].clone()
    ds2["logits"][:, -1] += 5.0
    dt2["logits"][:, -1] -= 3.0
    for name in ("logit+gt", "tsld"):
        assert torch.equal(build_method(name)(ds2, dt2, DB)[0], build_method(name)(DS, DT, DB)[0])


def test_decoder_tsld_protocol():
    m = build_method("tsld_only", protocol={"tsld_tau": 2.0, "tsld_batch": "mean", "tsld_variant": "up"})
    assert m.protocol == {"tsld_tau": 2.0, "tsld_batch": "mean", "tsld_variant": "up"}
    expected = L.tsld(DS["logits"][:, :-1], DT["logits"][:, :-1], DLAB[:, 1:], 2.0, "mean", "up")
    assert torch.equal(m(DS, DT, DB)[0], expected)
    assert build_method("tsld").protocol == {"tsld_tau": 10.0, "tsld_batch": "sum", "tsld_variant": "both"}


def test_decoder_gt_equals_hf_causal_lm_loss():
    from transformers import GPT2Config, GPT2LMHeadModel     # lazy: the import is the slow part

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=V, n_positions=8,
                                       bos_token_id=0, eos_token_id=0)).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 6, 7, 8, 9]])
    with torch.no_grad():
        out = model(ids, labels=DLAB)
    total, _ = build_method("gt")({"logits": out.logits}, {"logits": out.logits}, DB)
    assert torch.allclose(total, out.loss, rtol=1e-6, atol=0)


def test_family_mismatch_is_rejected():
    with pytest.raises(ValueError, match="rank 2"):
        build_method("tsld")(STU, TEA, BATCH)
    with pytest.raises(ValueError, match="rank 3"):
        build_method("ternarybert")(DS, DT, DB)


# ------------------------------------------------------------------------------ errors

def test_names_and_errors_list_valid_choices():
    names = ["ternarybert", "map", "output", "map+output", "ti", "gt",
             "logit", "logit+gt", "l2l+logit", "tsld", "tsld_only"]
    assert method_names() == names == list(METHODS)
    with pytest.raises(ValueError) as e:
        build_method("kd")
    assert all(n in str(e.value) for n in names)
    with pytest.raises(ValueError, match=r"'beta'.*valid: gamma, form"):
        validate_method("map+output", {"beta": 0.5})
    with pytest.raises(ValueError, match=r"'gamma'.*\(0, 1\]"):
        validate_method("map+output", {"gamma": 1.5})
    for bad in (0.0, True, "0.5"):
        with pytest.raises(ValueError, match="'gamma'"):
            validate_method("map+output", {"gamma": bad})
    for bad in (3, 1.0, True):
        with pytest.raises(ValueError, match="'form'.*1 or 2"):
            validate_method("map+output", {"form": bad})
    with pytest.raises(ValueError, match=r"'gamma'.*valid: \(none\)"):
        validate_method("map", {"gamma": 0.5})
    with pytest.raises(ValueError) as e:
        build_method("tsld", protocol={"temperature": 10})
    assert "'temperature'" in str(e.value)
    assert all(k in str(e.value) for k in ("task_type", "soft_ce", "tsld_tau", "output_site", "l2l_attention"))
    with pytest.raises(ValueError, match="'soft_ce'.*'sum_classes' or 'mean'"):
        build_method("ternarybert", protocol={"soft_ce": "sum"})
    with pytest.raises(ValueError, match="'tsld_tau'"):
        build_method("tsld", protocol={"tsld_tau": 0})
    assert validate_method("map+output", {"gamma": 0.5, "form": 2}, {"output_site": "pre_ln"}) is None
