"""NN-LUT / I-BERT non-linearities in real and registry models (NNLUT.md §1.3, §1.6, §3; role "approx").

* Real all-MiniLM-L6-v2 (``kdqat.assets``) on the first 8 Rotten Tomatoes reviews (file order,
  ``kdqat.data.offline``): the GELU inputs, attention scores and LayerNorm inputs it really
  produces are fed to the LUT / I-BERT replacements and compared with the exact ops; the swapped
  model's last hidden state is compared with the FP one; calibration on 32 other reviews lowers
  the error measured on the 8 held-out ones.
* The runner: approx rows of a tiny table (tiny-bert / toy_cls teacher) write normal records whose
  numbers a hand re-computation reproduces; registry validation; the NN-LUT tables share their
  teachers with glue_bert_base / demo_minilm_rt.

Stated tolerances (measured values on these 8 reviews in brackets; 16-entry tables):

* softmax, max |p − p_ref| and max |Σp − 1| over all 6 layers × 12 heads × rows (padding rows incl.):
  paper 0.025, 0.12 [0.0168, 0.085]; narrow 0.025, 0.004 [0.0163, 0.0021];
  I-BERT 2e-3, 1e-5 [8.1e-4, 4.8e-7];
* LayerNorm (13 modules): NN-LUT |y − y_ref| ≤ tol·|y_ref| + 1e-4 (y without β; the LUT only scales
  each row by one factor), paper 0.04 [0.027], narrow 0.016 [0.011]; I-BERT integer LayerNorm
  max |y − y_ref|/|γ|: 22-bit 0.03 [0.019, set by ⌊2^31/σ⌋], 16-bit 2e-3 [7e-4];
* GELU (inputs in [−17.2, 24.8], beyond the table's (−5, 5)): NN-LUT 0.03 [0.0219]; i-GELU 0.02 [0.0182];
* swapped model, |h − h_ref| over real tokens (|h_ref| ≤ 5.84), max / mean: paper 0.15 / 0.01
  [0.097 / 0.0060]; narrow 0.07 / 0.005 [0.042 / 0.0029]; I-BERT 0.2 / 0.02 [0.135 / 0.0126];
  cosine of mean-pooled embeddings ≥ 0.995 [≥ 0.9984].
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdqat.capture import Capture
from kdqat.nnlut.calibrate import FUNCS, _sites, calibrate, collect_inputs
from kdqat.nnlut.ibert import IGELU, ILayerNorm, ISoftmax
from kdqat.nnlut.ops import LutGELU, LutLayerNorm, LutSoftmax, default_tables, swap_ibert, swap_nonlinearities

REPO = Path(__file__).resolve().parents[1]
SOFTMAX_TOL = {"paper": (0.025, 0.12), "narrow": (0.025, 0.004), "ibert": (2e-3, 1e-5)}
LN_TOL = {"paper": 0.04, "narrow": 0.016}
IBERT_LN_TOL = {22: 0.03, 16: 2e-3}
GELU_TOL = {"nnlut": 0.03, "ibert": 0.02}
MODEL_TOL = {"paper": (0.15, 0.01), "narrow": (0.07, 0.005), "ibert": (0.2, 0.02)}


@pytest.fixture(scope="module")
def minilm():
    """(model, tokenize, held-out inputs, FP last hidden state, activations {"gelu", "scores", "ln"})."""
    from transformers import AutoModel, AutoTokenizer

    from kdqat.assets import minilm_path
    from kdqat.data.offline import rt_polarity_rows
    path = minilm_path()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    rows = rt_polarity_rows()

    def enc(rs):
        return dict(tok([r["text"] for r in rs], padding=True, return_tensors="pt"))

    held = enc(rows[:8])
    gelu, ln = [], []
    hooks = [m.register_forward_pre_hook(lambda m, a: gelu.append(a[0]))
             for m in model.modules() if type(m).__name__ == "GELUActivation"]
    hooks += [m.register_forward_pre_hook(lambda m, a: ln.append((m, a[0])))
              for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    with torch.no_grad(), Capture(model, record={"scores"}) as cap:
        captured = model(**held).last_hidden_state
        scores = list(cap.records["scores"])
    for h in hooks:
        h.remove()
    with torch.no_grad():
        ref = model(**held).last_hidden_state                   # the plain (sdpa) model
    assert torch.allclose(captured, ref, atol=1e-5)
    assert held["input_ids"].shape == (8, 45) and len(gelu) == 6 and len(scores) == 6 and len(ln) == 13
    acts = {"gelu": torch.cat([x.reshape(-1) for x in gelu]), "scores": scores, "ln": ln}
    calib = [enc(rows[8 + 8 * i:16 + 8 * i]) for i in range(4)]
    return model, held, ref, acts, calib


def test_ibert_modules_hand_values():
    # i-exp(0) = L(0), i-exp(−ln2) = L(0)·2^−1 (z = 1, p = 0): the ratio is exact; a masked key ~ 0
    ln2 = torch.tensor(0.6931471805599453, dtype=torch.float64)
    p = ISoftmax()(torch.stack([0 * ln2, -ln2, torch.tensor(-3.4e38, dtype=torch.float64)]))
    assert torch.allclose(p[:2], torch.tensor([2 / 3, 1 / 3], dtype=torch.float64), atol=1e-12) and 0 < p[2] < 1e-9
    # rows ±1: q = ±(2^21 − 1); σ from the integer sqrt, y = q·⌊2^31/σ⌋/2 · √4/2^30 = 1 − 9.5e-7
    ln = torch.nn.LayerNorm(4, elementwise_affine=False)
    y = ILayerNorm(ln)(torch.tensor([[1.0, -1.0, 1.0, -1.0]]))
    assert torch.equal(y, torch.tensor([[1.0, -1.0, 1.0, -1.0]]) * (2 * (2**21 - 1) * 256 / 2**30))
    # i-GELU: L saturates at 1 for x/√2 ≥ 1.769
    assert torch.equal(IGELU()(torch.tensor([0.0, 3.0])), torch.tensor([0.0, 3.0]))


def _softmax_errors(fn, scores):
    with torch.no_grad():
        err = max(float((fn(s) - s.softmax(-1)).abs().max()) for s in scores)
        total = max(float((fn(s).sum(-1) - 1).abs().max()) for s in scores)
    return err, total


@pytest.mark.parametrize("table_set", ["paper", "narrow"])
def test_lut_ops_on_real_minilm_activations(minilm, table_set):
    _, _, _, acts, _ = minilm
    tabs = default_tables(16, table_set)
    err, total = _softmax_errors(LutSoftmax(tabs["exp"], tabs["recip"]), acts["scores"])
    assert err < SOFTMAX_TOL[table_set][0] and total < SOFTMAX_TOL[table_set][1]
    for ln, x in acts["ln"]:
        lut_ln = LutLayerNorm(ln, copy.deepcopy(tabs["rsqrt"]))
        with torch.no_grad():
            y, ref = lut_ln(x) - ln.bias, ln(x) - ln.bias
        assert bool(((y - ref).abs() <= LN_TOL[table_set] * ref.abs() + 1e-4).all())
    g = acts["gelu"]
    assert g.min() < -15 and g.max() > 20                       # real inputs leave the table's (−5, 5)
    with torch.no_grad():
        assert float((LutGELU(copy.deepcopy(tabs["gelu"]))(g) - F.gelu(g)).abs().max()) < GELU_TOL["nnlut"]


def test_ibert_ops_on_real_minilm_activations(minilm):
    _, _, _, acts, _ = minilm
    err, total = _softmax_errors(ISoftmax(), acts["scores"])
    assert err < SOFTMAX_TOL["ibert"][0] and total < SOFTMAX_TOL["ibert"][1]
    for bits, tol in IBERT_LN_TOL.items():
        worst = 0.0
        for ln, x in acts["ln"]:
            with torch.no_grad():
                y, ref = ILayerNorm(ln, bits)(x), ln(x)
            assert y.dtype == x.dtype
            worst = max(worst, float(((y - ref) / ln.weight.detach().abs().clamp(min=1e-3)).abs().max()))
        assert 0 < worst < tol, bits
    g = acts["gelu"]
    with torch.no_grad():
        assert float((IGELU()(g) - F.gelu(g)).abs().max()) < GELU_TOL["ibert"]


@pytest.mark.parametrize("name", ["paper", "narrow", "ibert"])
def test_swapped_minilm_close_to_fp(minilm, name):
    model, held, ref, _, _ = minilm
    h = swap_ibert(model) if name == "ibert" else swap_nonlinearities(model, table_set=name)
    with h, torch.no_grad(), Capture(model, softmax_fn=h.softmax_fn):
        assert len(h.swapped) == 6 + 13
        out = model(**held).last_hidden_state
    m = held["attention_mask"].bool()
    d = (out - ref).abs()[m]
    assert float(d.max()) < MODEL_TOL[name][0] and float(d.mean()) < MODEL_TOL[name][1]

    def pool(o):
        return (o * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    assert float(F.cosine_similarity(pool(out), pool(ref)).min()) > 0.995
    with torch.no_grad():                                       # restored: bitwise the FP model again
        assert torch.equal(model(**held).last_hidden_state, ref)


def test_calibration_lowers_held_out_error_on_minilm(minilm):
    """Paper tables, calibrated on 32 other reviews: the per-table mean |LUT(x) − f(x)| summed over
    the 21 tables [0.149 → 0.133] and the hidden-state error [mean 0.0060 → 0.0052] on the 8 held-out
    reviews both go down; every table's error on its calibration inputs goes down."""
    model, held, ref, _, calib = minilm
    m = held["attention_mask"].bool()
    with swap_nonlinearities(model) as h, torch.no_grad(), Capture(model, softmax_fn=h.softmax_fn):
        x_held = collect_inputs(h, [held], lambda b: model(**b), per_call=10**9)

        def measure():
            errs = sum(float((getattr(o, a)(x_held[s]) - FUNCS[k](x_held[s])).abs().mean())
                       for s, (o, a, k) in _sites(h).items())
            return errs, float((model(**held).last_hidden_state - ref).abs()[m].mean())

        before = measure()
        report = calibrate(h, calib, run=lambda b: model(**b), per_call=4096)
        after = measure()
    assert len(report) == 21 and all(r["l1_after"] < r["l1_before"] for r in report.values())
    assert after[0] < before[0] and after[1] < before[1], (before, after)


# ------------------------------------------------------------------------------ runner and registry

TINY = """
[table]
id = "tiny_approx"
title = "tiny approx"
paper = "test"
table = "test"
source = "synthetic"
kind = "encoder"

[defaults]
model = "tiny-bert"
seeds = [1]

[defaults.teacher]        # = smoke_encoder's teacher block
lr = 3e-3
epochs = 8
optimizer = "adamw"
warmup = 0.0
weight_decay = 0.0
batch_size = 16
seed = 42

[[rows]]
id = "full_prec"
label = "Full-Prec"
role = "teacher"

[[rows]]
id = "nnlut_cal"
label = "NN-LUT all + calibration"
role = "approx"
method = "nnlut"
params = { ops = ["layernorm", "softmax", "gelu"], calibrate = true, calib_fraction = 0.25, calib_epochs = 2 }

[[rows]]
id = "ibert"
label = "I-BERT"
role = "approx"
method = "ibert"
EXTRA
[[columns]]
id = "toy"
label = "toy"
task = "toy_cls"
"""


def _table(tmp_path, extra: str = "", name: str = "tiny.toml"):
    from runners.registry import load_table
    p = tmp_path / name
    p.write_text(TINY.replace("EXTRA", extra))
    return p, load_table


def test_approx_jobs_write_records(tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    from kdqat.data.toy import toy_cls
    from runners import records
    from runners import run as run_cli
    path, load_table = _table(tmp_path)
    monkeypatch.setenv("KDQAT_RESULTS", str(tmp_path / "res"))
    assert run_cli.main([str(path), "--no-mlflow", "--max-steps", "20"]) == 0
    jobs = {j.cells[0].split("/")[1]: j for j in load_table(path, max_steps=20).jobs()}
    rec = {k: records.read_result(j.hash) for k, j in jobs.items()}
    assert {r["role"] for r in rec.values()} == {"teacher", "approx"} and rec["full_prec"]["steps"] == 20
    for row in ("nnlut_cal", "ibert"):
        r, q = rec[row], rec[row]["quant_report"]
        assert r["status"] == "done" and r["steps"] == 0 and r["score"] == r["metrics"]["best"]["report"]
        assert q["fp"]["report"] == rec["full_prec"]["score"]            # same weights, same dev data
        assert len(q["swapped"]) == 2 + 5 and q["probe"]["examples"] == 128
    assert jobs["nnlut_cal"].config["params"]["ops"] == ["gelu", "softmax", "layernorm"]
    cal = rec["nnlut_cal"]["quant_report"]["calibration"]
    assert len(cal) == 2 + 5 + 2 and all(v["l1_after"] < v["l1_before"] for v in cal.values())
    assert cal["bert.embeddings.LayerNorm"]["samples"] == 128 * 32     # one σ² per token of ⌈0.25·512⌉ rows
    # the I-BERT score by hand: the teacher's weights, swapped, on the toy dev split
    model = AutoModelForSequenceClassification.from_pretrained(records.job_dir(jobs["full_prec"].hash) / "model").eval()
    dev = toy_cls(max_len=32)["dev"]
    with swap_ibert(model) as h, torch.no_grad(), Capture(model, softmax_fn=h.softmax_fn):
        logits = model(input_ids=dev["input_ids"], attention_mask=dev["attention_mask"],
                       token_type_ids=dev["token_type_ids"]).logits
    acc = 100.0 * float((logits.argmax(-1) == dev["labels"]).double().mean())
    assert rec["ibert"]["score"] == pytest.approx(acc, abs=1e-9)


@pytest.mark.parametrize("extra,field,msg", [
    ('[[rows]]\nid = "x"\nlabel = "x"\nrole = "approx"\nmethod = "nnlut"\nparams = { entries = 20 }\n',
     "params.entries", "cached tables"),
    ('[[rows]]\nid = "x"\nlabel = "x"\nrole = "approx"\nmethod = "nnlut"\nparams = { ops = ["tanh"] }\n',
     "params.ops", "distinct names"),
    ('[[rows]]\nid = "x"\nlabel = "x"\nrole = "approx"\nmethod = "nnlut"\nparams = { calib_fraction = 0.5 }\n',
     "params.calib_fraction", "only used with calibrate"),
    ('[[rows]]\nid = "x"\nlabel = "x"\nrole = "approx"\nmethod = "ibert"\nparams = { calibrate = true }\n',
     "params.calibrate", "unknown parameter"),
    ('[[rows]]\nid = "x"\nlabel = "x"\nrole = "approx"\nmethod = "lut"\n', "method", "unknown approximation"),
    ('[[rows]]\nid = "x"\nlabel = "x"\nrole = "approx"\nmethod = "nnlut"\nquant = "kim2022_w2a8"\n',
     "quant", "approx row"),
])
def test_registry_rejects_bad_approx_rows(tmp_path, extra, field, msg):
    from runners.registry import RegistryError
    path, load_table = _table(tmp_path, extra)
    with pytest.raises(RegistryError) as e:
        load_table(path)
    assert e.value.field == field and msg in str(e.value)


def test_registry_approx_rows_resolve_and_share_teachers(tmp_path):
    from runners.job import recipe_config
    from runners.registry import RegistryError, load_table
    path, _ = _table(tmp_path)
    tiny, smoke = load_table(path), load_table(REPO / "registry" / "smoke_encoder.toml")
    teacher = {j.hash for j in smoke.jobs() if j.role == "teacher"}
    assert {j.hash for j in tiny.jobs() if j.role == "teacher"} == teacher
    job = next(j for j in tiny.jobs() if j.cells == ["tiny_approx/ibert/toy"])
    assert job.config["params"] == {"ops": ["gelu", "softmax", "layernorm"], "ln_bits": 22} and job.steps == 0
    assert recipe_config(job)["train"] == {"batch_size": 16, "max_len": 32, "max_train_examples": None,
                                           "max_dev_examples": None}
    for table, base in (("nnlut_bert", "glue_bert_base"), ("nnlut_demo", "demo_minilm_rt")):
        t, b = load_table(REPO / "registry" / f"{table}.toml"), load_table(REPO / "registry" / f"{base}.toml")
        assert {j.hash for j in t.jobs() if j.role == "teacher"} == {j.hash for j in b.jobs() if j.role == "teacher"}
        assert [r.id for r in t.rows] == ["full_prec", "nnlut_gelu", "nnlut_softmax", "nnlut_layernorm", "nnlut_all",
                                          "nnlut_all_cal", "nnlut_all_narrow", "ibert"]
        assert not t.published and len(t.jobs()) == len(t.columns) * (1 + 6 + 3)
        cal = t.cell(f"nnlut_all_cal/{t.columns[0].id}").config["params"]
        assert cal == {"ops": ["gelu", "softmax", "layernorm"], "entries": 16, "table_set": "paper",
                       "calibrate": True, "calib_fraction": 0.1, "calib_epochs": 5, "calib_lr": 1e-4}
    dec = tmp_path / "dec.toml"                                 # a decoder table refuses approx rows
    dec.write_text((REPO / "registry" / "smoke_decoder.toml").read_text()
                   + '\n[[rows]]\nid = "x"\nlabel = "x"\nrole = "approx"\nmethod = "nnlut"\n')
    with pytest.raises(RegistryError) as e:
        load_table(dec)
    assert e.value.field == "method" and "encoder tables only" in str(e.value)
