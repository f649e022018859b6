"""The decoder path end to end, offline: tiny GPT-2 / OPT / LLaMA (and GPT-Neo) models, local data.

* ``registry/smoke_decoder_tasks.toml`` (toy_lm, three families): teachers, W4/W2 QAT-KD and OPTQ
  rows run; a PTQ record equals GPTQ applied by hand to the saved teacher; W4 stays per row.
* A test-local table over local copies of PIQA / GSM8K / CoLA / RTE-shaped data (``KDQAT_DATA_DIR``)
  and local lm-eval tasks (``KDQAT_LM_EVAL_TASKS``), word-level tokenizer saved with each model:
  Alpaca fine-tune, QAT with logit / logit+gt / tsld / l2l+logit, OPTQ / AWQ; the records' ACC and
  PPL equal recomputations from the saved teachers; bf16 precision is applied and recorded.
* GPT-Neo: logit and OPTQ run, L2L fails with an "unsupported" message.
* Units: LM-classification template and scoring, padding / trimming, example perplexity,
  calibration batches, lm-eval metric mapping, the PIQA test-split quirk, quantization keywords.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast)

from kdqat.data import instruct, lm_cls
from kdqat.recipes import instruct as rinst
from kdqat.recipes import ptq as rptq
from kdqat.recipes.decoder import check_supported, quant_kwargs
from runners import records
from runners import run as run_cli
from runners.registry import load_table

REPO = Path(__file__).resolve().parents[1]
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>"]
PIQA = {"train": [{"goal": f"to {g} the {o}", "sol1": f"use a {t}", "sol2": f"use the {u}", "label": i % 2}
                  for i, (g, o, t, u) in enumerate([("open", "door", "key", "hammer"), ("cut", "bread", "knife", "spoon"),
                                                    ("dry", "hair", "towel", "rock"), ("boil", "water", "pot", "shoe"),
                                                    ("clean", "floor", "mop", "book"), ("light", "room", "lamp", "cup"),
                                                    ("fix", "chair", "glue", "sand"), ("fill", "cup", "tap", "fork")])],
        "validation": [{"goal": "to open the jar", "sol1": "twist the lid", "sol2": "paint the lid", "label": 0},
                       {"goal": "to cut the paper", "sol1": "use a spoon", "sol2": "use the knife", "label": 1},
                       {"goal": "to dry the cup", "sol1": "use a towel", "sol2": "use the rock", "label": 0}],
        "test": [{"goal": "to fix the door", "sol1": "use a hammer", "sol2": "use the glue", "label": -1},
                 {"goal": "to clean the cup", "sol1": "use a mop", "sol2": "use the tap", "label": -1}]}
GSM = {"train": [{"question": f"Tom has {a} apples and gets {b} more . How many ?",
                  "answer": f"{a} plus {b} is {a + b} .\n#### {a + b}"} for a, b in [(1, 2), (2, 3), (3, 1), (4, 2), (2, 2)]],
       "test": [{"question": f"Tom has {a} apples and gets {b} more . How many ?", "answer": f"{a} plus {b} is {a + b} .\n#### {a + b}"}
                for a, b in [(1, 1), (3, 2)]]}
COLA = {"train": [{"sentence": s, "label": y, "idx": i} for i, (s, y) in enumerate(
            [("the cat sat on the mat", 1), ("cat the on sat mat the", 0), ("a dog ran to the park", 1),
             ("dog a the to ran park", 0), ("the sun is hot", 1), ("is sun the hot", 0), ("we like the bread", 1),
             ("like bread we the", 0)])],
        "validation": [{"sentence": s, "label": y, "idx": i} for i, (s, y) in enumerate(
            [("the dog sat on the mat", 1), ("mat the on dog sat", 0), ("the cat is hot", 1), ("hot cat is the", 0),
             ("a cat ran to the door", 1)])]}
RTE = {"train": [{"sentence1": a, "sentence2": b, "label": y, "idx": i} for i, (a, b, y) in enumerate(
            [("the cat sat on the mat", "a cat sat", 0), ("the dog ran to the park", "the dog slept", 1),
             ("the sun is hot", "the sun is warm", 0), ("we like the bread", "we hate bread", 1)])],
       "validation": [{"sentence1": "the cat ran to the door", "sentence2": "a cat ran", "label": 0, "idx": 0},
                      {"sentence1": "the sun is hot", "sentence2": "the sun is cold", "label": 1, "idx": 1}]}
DATA = {"piqa": PIQA, "gsm8k": GSM, "lm_cola": COLA, "lm_rte": RTE}
LM_EVAL_YAML = {
    "piqa": """task: piqa
dataset_path: json
dataset_kwargs:
  data_files:
    validation: "@TASK_DIR@/piqa.jsonl"
validation_split: validation
output_type: multiple_choice
doc_to_text: "Question: {{goal}}\\nAnswer:"
doc_to_choice: "{{[sol1, sol2]}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "gsm8k": """task: gsm8k
dataset_path: json
dataset_kwargs:
  data_files:
    test: "@TASK_DIR@/gsm8k.jsonl"
test_split: test
output_type: generate_until
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["Question"]
  max_gen_toks: 4
  do_sample: false
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""}


def _texts() -> list[str]:
    out = [instruct.build_prompt(""), "Question : Answer : #### - . ,"]
    out += [t for t, words in lm_cls.TEMPLATES.values() for t in [t, *words]]
    for splits in DATA.values():
        out += [str(v) for recs in splits.values() for r in recs for v in r.values()]
    return out


def make_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over every word of the test texts; OPT/LLaMA-like ones prepend <s>."""
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for t in _texts() for w, _ in pre.pre_tokenize_str(t)} - set(SPECIALS))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")


def make_model(family: str, vocab: int):
    ids = dict(pad_token_id=1, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256, **ids))
    if family == "opt":
        return OPTForCausalLM(OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        ffn_dim=64, max_position_embeddings=256, word_embed_proj_dim=32, **ids))
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=4, intermediate_size=64, max_position_embeddings=256, **ids))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Model+tokenizer folders per family, a data dir (save_to_disk per task), lm-eval templates."""
    import datasets
    root = tmp_path_factory.mktemp("decoder_assets")
    for family in ("gpt2", "opt", "llama"):
        tok = make_tokenizer(bos=family != "gpt2")
        model = make_model(family, len(tok))
        model.generation_config.pad_token_id = 1
        model.save_pretrained(root / family)
        tok.save_pretrained(root / family)
    for task, splits in DATA.items():
        datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in splits.items()}).save_to_disk(
            str(root / "data" / task))
    (root / "lm_eval").mkdir()
    for task, text in LM_EVAL_YAML.items():
        (root / "lm_eval" / f"{task}.yaml").write_text(text)
    split = {"piqa": "validation", "gsm8k": "test"}
    for task in LM_EVAL_YAML:
        (root / "lm_eval" / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DATA[task][split[task]]))
    return root


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("KDQAT_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


def _records(table) -> dict:
    out = {}
    for j in table.jobs():
        rec = records.read_result(j.hash) or records.read_failure(j.hash)
        for c in j.cells:
            out[c.split("/", 1)[1]] = rec
    return out


# ---------------------------------------------------------------------------------------- toy_lm families

def test_smoke_table_families_ptq_and_granularity(results):
    from kdqat.perplexity import block_perplexity
    from kdqat.ptq import gptq_quantize_model
    from kdqat.data.toy import toy_lm
    path = REPO / "registry" / "smoke_decoder_tasks.toml"
    assert run_cli.main([str(path), "--no-mlflow", "--rows", "fp", "w4_optq", "w4_tsld", "w2_l2l_logit"]) == 0
    table = load_table(path)
    recs = {k: v for k, v in _records(table).items() if v is not None}
    assert len(recs) == 12 and all(r["status"] == "done" for r in recs.values())
    for fam in ("gpt2", "opt", "llama"):
        assert {m["granularity"] for m in recs[f"w4_tsld/{fam}"]["quant_report"]["modules"]} == {"row"}
        assert {m["granularity"] for m in recs[f"w2_l2l_logit/{fam}"]["quant_report"]["modules"]} == {"tensor"}
        assert all(r["protocol"]["precision"] == "fp32" for k, r in recs.items() if k.endswith(fam))
    # the OPTQ record = GPTQ with HF GPTQConfig's defaults, by hand, on the saved teacher and the teacher's data
    j = next(j for j in table.jobs() if j.cells == ["smoke_decoder_tasks/w4_optq/opt"])
    rec = records.read_result(j.hash)
    model = AutoModelForCausalLM.from_pretrained(records.job_dir(j.teacher.hash) / "model")
    data = toy_lm(block=64)
    gptq_quantize_model(model, [data["train"][:4], data["train"][4:8]], 4, -1, sym=True, damp=0.1, true_sequential=True)
    want = block_perplexity(model, data["validation"][:8], batch_size=4)["ppl"]
    assert rec["score"] == want and rec["metrics"]["best"]["ppl"] == want and rec["steps"] == 0
    teacher_ppl = records.read_result(j.teacher.hash)["score"]
    assert want != teacher_ppl and abs(want / teacher_ppl - 1) < 0.05
    assert rec["quant_report"]["params"] == {"bits": 4, "group_size": -1, "calib_examples": 8}
    assert rec["data"]["n_eval"] == 8 and rec["data"]["n_train"] == 32   # the teacher's caps


def test_gpt_neo_logit_and_ptq_run_l2l_is_refused(results, tmp_path):
    text = (REPO / "registry" / "smoke_decoder_tasks.toml").read_text()
    head = text.split("[[rows]]")[0].replace('id = "smoke_decoder_tasks"', 'id = "neo"')
    toml = head + """
[models.tiny-neo]
family = "gpt_neo"
config = { model_type = "gpt_neo", vocab_size = 128, hidden_size = 32, num_layers = 2, num_heads = 4, attention_types = [[["global", "local"], 1]], window_size = 16, max_position_embeddings = 64, intermediate_size = 64 }

[[rows]]
id = "fp"
label = "FP"
role = "teacher"

[[rows]]
id = "logit"
label = "Logit"
method = "logit"
quant = "tsld_w2a16"

[[rows]]
id = "l2l"
label = "L2L+Logit"
method = "l2l+logit"
quant = "tsld_w2a16"

[[rows]]
id = "optq"
label = "OPTQ"
role = "ptq"
method = "optq"
params = { calib_examples = 4 }

[[columns]]
id = "neo"
label = "GPT-Neo tiny"
model = "tiny-neo"
"""
    (tmp_path / "neo.toml").write_text(toml)
    assert run_cli.main([str(tmp_path / "neo.toml"), "--no-mlflow"]) == 1
    recs = _records(load_table(tmp_path / "neo.toml"))
    assert [recs[k]["status"] for k in ("fp/neo", "logit/neo", "optq/neo")] == ["done"] * 3
    fail = recs["l2l/neo"]
    assert fail["status"] == "failed" and fail["error"].startswith("NotImplementedError: unsupported")
    assert "GPT-Neo" in fail["error"] and "scores" in fail["error"]


# ---------------------------------------------------------------------------------------- instruction / lm_cls

TASK_TABLE = """
[table]
id = "tasks"
title = "t"
paper = "p"
table = "T"
source = "s"
kind = "decoder"

[models.w-gpt2]
hub = "{root}/gpt2"
family = "gpt2"

[models.w-opt]
hub = "{root}/opt"
family = "opt"

[models.w-llama]
hub = "{root}/llama"
family = "llama"

[defaults]
seeds = [3]
quant = "tsld_w2a16"

[defaults.train]
lr = 3e-3
epochs = 2
optimizer = "adamw"
warmup = 0.0
weight_decay = 0.0
batch_size = 4
max_len = 128

[defaults.teacher]
lr = 1e-2
epochs = 6
optimizer = "adamw"
warmup = 0.0
weight_decay = 0.0
batch_size = 4
max_len = 128
seed = 42
selection = "best"

[[rows]]
id = "fp"
label = "FP"
role = "teacher"

[[rows]]
id = "logit"
label = "Logit"
method = "logit"

[[rows]]
id = "logit_gt"
label = "Logit+GT"
method = "logit+gt"

[[rows]]
id = "tsld"
label = "TSLD"
method = "tsld"

[[rows]]
id = "l2l"
label = "L2L+Logit"
method = "l2l+logit"

[[rows]]
id = "optq"
label = "OPTQ"
role = "ptq"
method = "optq"
params = {{ calib_examples = 4 }}
protocol = {{ granularity = "row" }}

[[rows]]
id = "awq"
label = "AWQ"
role = "ptq"
method = "awq"
params = {{ calib_examples = 4 }}

[[columns]]
id = "piqa"
label = "PIQA"
task = "piqa"
model = "w-gpt2"

[[columns]]
id = "gsm8k"
label = "GSM8K"
task = "gsm8k"
model = "w-llama"

[[columns]]
id = "cola"
label = "CoLA"
task = "lm_cola"
model = "w-opt"

[[columns]]
id = "rte"
label = "RTE"
task = "lm_rte"
model = "w-opt"
protocol = {{ precision = "bf16" }}
"""
SKIP = {"piqa": ("awq",), "gsm8k": ("logit", "logit_gt", "l2l", "optq", "awq"),
        "cola": ("logit", "logit_gt", "l2l"), "rte": ("logit_gt", "tsld", "l2l", "optq", "awq")}


@pytest.fixture(scope="module")
def task_run(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("task_results")
    text = TASK_TABLE.format(root=assets) + "".join(
        f'\n[[cells]]\nrow = "{r}"\ncolumn = "{c}"\nskip = true\n' for c, rows in SKIP.items() for r in rows)
    path = root / "tasks.toml"
    path.write_text(text)
    mp = pytest.MonkeyPatch()
    mp.setenv("KDQAT_RESULTS", str(root / "results"))
    mp.setenv("KDQAT_DATA_DIR", str(assets / "data"))
    mp.setenv("KDQAT_LM_EVAL_TASKS", str(assets / "lm_eval"))
    code = run_cli.main([str(path), "--no-mlflow"])
    table = load_table(path)
    yield code, table, _records(table), root
    mp.undo()


def _teacher(table, cell):
    job = next(j for j in table.jobs() if j.cells and j.cells[0].endswith("/" + cell))
    return job, records.job_dir(job.hash) / "model"


def test_task_table_runs_every_role(task_run):
    code, table, recs, _ = task_run
    assert code == 0, {k: r.get("error") for k, r in recs.items() if r["status"] != "done"}
    assert len(recs) == 14 and all(r["status"] == "done" for r in recs.values())
    for k in ("fp/piqa", "logit/piqa", "logit_gt/piqa", "tsld/piqa", "l2l/piqa", "optq/piqa", "fp/gsm8k", "tsld/gsm8k"):
        best, last = recs[k]["metrics"]["best"], recs[k]["metrics"]["last"]
        assert best["acc"] == last["acc"] and best["report"] == best["acc"] == recs[k]["score"]
        assert math.isfinite(best["ppl"]) and best["ppl"] > 1
    assert "acc_norm" in recs["tsld/piqa"]["metrics"]["best"] and "acc_norm" not in recs["tsld/gsm8k"]["metrics"]["best"]
    assert set(recs["tsld/gsm8k"]["lm_eval"]) >= {"exact_match,strict-match"}
    for k in ("fp/cola", "tsld/cola", "optq/cola", "awq/cola"):
        m = recs[k]["metrics"]["best"]
        assert m["selection"] == m["mcc"] == recs[k]["score"] and 0 <= m["acc"] <= 100
    assert recs["optq/cola"]["metrics"]["best"]["ppl"] != recs["awq/cola"]["metrics"]["best"]["ppl"]
    assert recs["fp/piqa"]["sources"]["data_dir"].endswith("data") and recs["fp/piqa"]["data"]["n_eval"] == 3


def test_instruction_teacher_acc_and_ppl_recomputed(task_run, assets):
    from kdqat.lm_eval_bridge import evaluate_lm
    _, table, recs, root = task_run
    job, mdir = _teacher(table, "fp/piqa")
    model, tok = AutoModelForCausalLM.from_pretrained(mdir), AutoTokenizer.from_pretrained(assets / "gpt2")
    lm = evaluate_lm(model, tok, ["piqa"], include_path=records.job_dir(job.hash) / "lm_eval_tasks", batch_size=4)
    rec = recs["fp/piqa"]
    assert rec["metrics"]["best"]["acc"] == 100 * lm["piqa"]["acc"]
    assert rec["metrics"]["best"]["acc_norm"] == 100 * lm["piqa"]["acc_norm"]
    # PPL: HF loss per eval batch (3 examples <= one batch), by hand over the answer tokens
    exs = [instruct.encode(tok, instruct.build_prompt(r["goal"] + " "), r["sol1"] if r["label"] == 0 else r["sol2"], 128)
           for r in PIQA["validation"]]
    nll, n = 0.0, 0
    with torch.no_grad():
        for e in exs:
            logp = model(torch.tensor([e["input_ids"]])).logits[0].log_softmax(-1)
            for p in range(1, len(e["labels"])):
                if e["labels"][p] != -100:
                    nll -= float(logp[p - 1, e["labels"][p]])
                    n += 1
    assert rec["metrics"]["best"]["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_lm_cls_teacher_acc_mcc_recomputed_and_bf16(task_run, assets):
    from sklearn.metrics import matthews_corrcoef
    _, table, recs, _ = task_run
    tok = AutoTokenizer.from_pretrained(assets / "opt")
    _, mdir = _teacher(table, "fp/cola")
    model = AutoModelForCausalLM.from_pretrained(mdir)
    preds, labels = [], []
    with torch.no_grad():
        for r in COLA["validation"]:
            prompt = lm_cls.build_prompt(lm_cls.TEMPLATES["cola"][0].format(a=r["sentence"]))
            n = len(tok(prompt)["input_ids"])
            lls = []
            for word in ("no", "yes"):
                ids = tok(prompt + " " + word)["input_ids"]
                logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
                lls.append(sum(float(logp[p - 1, ids[p]]) for p in range(n, len(ids))))
            preds.append(int(lls[1] > lls[0]))
            labels.append(r["label"])
    best = recs["fp/cola"]["metrics"]["best"]
    assert best["acc"] == pytest.approx(100 * sum(p == y for p, y in zip(preds, labels)) / len(labels))
    assert best["mcc"] == pytest.approx(100 * matthews_corrcoef(labels, preds), abs=1e-9)
    # RTE column runs in bf16: teacher weights saved in bf16, precision recorded
    _, rdir = _teacher(table, "fp/rte")
    assert AutoModelForCausalLM.from_pretrained(rdir, dtype="auto").dtype == torch.bfloat16
    assert recs["fp/rte"]["protocol"] == {"precision": "bf16", "piqa_split": "validation"}
    assert recs["logit/rte"]["protocol"]["precision"] == "bf16" and recs["fp/cola"]["protocol"]["precision"] == "fp32"


# ---------------------------------------------------------------------------------------- units

def test_lm_cls_template_encoding_and_scoring(assets):
    tok = AutoTokenizer.from_pretrained(assets / "opt")
    rec = RTE["validation"][1]
    prompt, responses, label = lm_cls.format_record("lm_rte", rec, "sentence1", "sentence2")
    assert prompt == ("Below is an instruction that describes a task. Write a response that appropriately completes "
                      "the request.\n\n### Instruction:\nDoes the premise entail the hypothesis? Answer yes or no.\n"
                      "Premise: the sun is hot\nHypothesis: the sun is cold\n\n### Response:")
    assert responses == (" yes", " no") and label == 1                    # RTE: 0 = entailment
    ex = lm_cls.encode_record(tok, "lm_rte", rec, "sentence1", "sentence2")
    n = len(tok(prompt)["input_ids"])
    assert ex["n_prompt"] == n and ex["input_ids"][0] == 2                 # BOS
    assert ex["input_ids"][n:] == tok(" no", add_special_tokens=False)["input_ids"] + [3]
    assert ex["labels"][:n - 1] == [-100] * (n - 1) and ex["labels"][n - 1:] == ex["input_ids"][n - 1:]
    model = AutoModelForCausalLM.from_pretrained(assets / "opt").requires_grad_(False)
    exs = [lm_cls.encode_record(tok, "lm_cola", r, "sentence", None) for r in COLA["validation"]]
    got = lm_cls.score_choices(model, exs, pad_id=1, batch_size=3)
    for i, e in enumerate(exs):
        for c, ids in enumerate(e["choices"]):
            logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
            want = sum(float(logp[p - 1, ids[p]]) for p in range(e["n_prompt"], len(ids)))
            assert float(got[i, c]) == pytest.approx(want, abs=1e-4)
    with pytest.raises(ValueError, match="no LM-classification template"):
        lm_cls.glue_name("lm_qqp")


def test_padding_trimming_and_example_perplexity(assets):
    tok = AutoTokenizer.from_pretrained(assets / "gpt2")
    exs = instruct.examples_from_records("gsm8k", GSM["train"][:3], tok, 128)
    data = rinst.pad_examples(exs, rinst.pad_id(tok))
    lens = [len(e["input_ids"]) for e in exs]
    assert data["input_ids"].shape == (3, max(lens)) and data["attention_mask"].sum(1).tolist() == lens
    ids, mask, labels = rinst.batch_inputs({k: v[1:3] for k, v in data.items()})
    assert ids.shape[1] == max(lens[1:3]) and (labels[mask == 0] == -100).all()
    model = AutoModelForCausalLM.from_pretrained(assets / "gpt2")
    got = rinst.example_perplexity(model, data, batch_size=2)
    losses = []   # per batch: HF mean CE over its targets; Trainer weights by the batch's example count
    with torch.no_grad():
        for batch in ([exs[0], exs[1]], [exs[2]]):
            nll, n = 0.0, 0
            for e in batch:
                logp = model(torch.tensor([e["input_ids"]])).logits[0].log_softmax(-1)
                for p in range(1, len(e["labels"])):
                    if e["labels"][p] != -100:
                        nll, n = nll - float(logp[p - 1, e["labels"][p]]), n + 1
            losses.append((nll / n, len(batch)))
    want = sum(l * b for l, b in losses) / 3
    assert got["loss"] == pytest.approx(want, rel=1e-5) and got["ppl"] == pytest.approx(math.exp(want), rel=1e-5)


def test_calibration_batches_and_quant_kwargs():
    blocks = {"input_ids": torch.arange(60).reshape(6, 10)}
    cb = rptq.calibration_batches(blocks, 5)
    assert [b.shape for b in cb] == [(4, 10), (1, 10)] and torch.equal(torch.cat(cb), blocks["input_ids"][:5])
    ex = {"input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}
    cb = rptq.calibration_batches(ex, 9)
    assert [b["input_ids"].tolist() for b in cb] == [[[5, 6, 7]], [[8, 9]]]
    proto = {"granularity": "tensor", "conv1d_rows": "official"}
    assert quant_kwargs({"quant": "tsld_w2a16", "protocol": proto}) == {"granularity": "tensor", "conv1d_rows": "official"}
    assert quant_kwargs({"quant": "tsld_w4a16", "protocol": proto}) == {"conv1d_rows": "official"}


def test_lm_eval_mapping_and_opt_vocab_limit(monkeypatch):
    import kdqat.lm_eval_bridge as bridge
    seen = {}

    def fake(model, tok, tasks, **kw):
        seen.update(kw, tasks=tasks)
        return {"gsm8k": {"exact_match,strict-match": 0.25, "exact_match,flexible-extract": 0.5},
                "piqa": {"acc": 0.5, "acc_norm": 0.75}}
    monkeypatch.setattr(bridge, "evaluate_lm", fake)
    opt = OPTForCausalLM(OPTConfig(vocab_size=50272, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                   ffn_dim=8, max_position_embeddings=8, word_embed_proj_dim=8))
    assert rinst.lm_eval_scores(opt, None, "gsm8k", "opt")[0] == {"acc": 25.0}
    assert seen["vocab_limit"] == 50257 and seen["tasks"] == ["gsm8k"]
    assert rinst.lm_eval_scores(opt, None, "piqa", "gpt2")[0] == {"acc": 50.0, "acc_norm": 75.0}
    assert seen["vocab_limit"] is None


def test_piqa_test_split_quirk(assets):
    from kdqat.data.tasks import get_task
    tok = AutoTokenizer.from_pretrained(assets / "gpt2")
    spec, path = get_task("piqa"), str(assets / "data" / "piqa")
    quirk = rinst.load_examples(spec, tok, 128, path, piqa_split="test")["eval"]
    want = [instruct.encode(tok, instruct.build_prompt(r["goal"] + " "), r["sol2"], 128) for r in PIQA["test"]]
    assert quirk == want
    assert len(rinst.load_examples(spec, tok, 128, path)["eval"]) == len(PIQA["validation"])


def test_gpt_neo_check_supported():
    from kdqat.kd.methods import build_method
    check_supported("gpt_neo", build_method("tsld"))
    check_supported("gpt2", build_method("l2l+logit"))
    with pytest.raises(NotImplementedError, match="GPT-Neo"):
        check_supported("gpt_neo", build_method("l2l+logit"))
