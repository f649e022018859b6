"""Registry: expansion to jobs, cell addressing, inheritance, hashing, teacher sharing, protocol.

Real tables (registry/*.toml) for counts and sharing; tiny tables written to tmp_path for
inheritance, hashing sensitivity, step counts and a decoder table.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from kdqat.protocol import Protocol
from runners.registry import RegistryError, canonical_json, config_hash, load_table

REG = Path(__file__).resolve().parents[1] / "registry"
PROTO = "[defaults.protocol]\n{}\n\n[defaults.train]"   # inserts a protocol switch into TINY
GLUE = ["rte", "cola", "stsb", "sst2", "qnli", "mnli", "qqp", "mrpc"]

TINY = """
[table]
id = "tiny"
title = "t"
paper = "p"
table = "T"
source = "s"
kind = "encoder"
notes = ["a note"]

[defaults]
model = "tiny-bert"
quant = "kim2022_w2a8"
seeds = [1, 2]

[defaults.train]
lr = 2e-5
epochs = 3
optimizer = "bertadam"
warmup = 0.1
weight_decay = 0.01

[defaults.teacher]
lr = 2e-5
epochs = 3
optimizer = "adamw"
warmup = 0.0
weight_decay = 0.0

[[rows]]
id = "fp"
label = "Full-Prec"
role = "teacher"

[[rows]]
id = "mo"
label = "Map+Output"
method = "map+output"
params = { gamma = 0.5 }

[[columns]]
id = "rte"
label = "RTE"
task = "rte"
train_size = 100

[[columns]]
id = "cola"
label = "CoLA"
task = "cola"

[published]
"mo.rte" = { mean = 70.0, std = 1.0 }
"""


def _load(tmp_path: Path, text: str, name: str = "t.toml", **kw):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return load_table(p, **kw)


def _hashes(table) -> list[str]:
    return [j.hash for j in table.jobs()]


# ------------------------------------------------------------------ real tables
def test_glue_bert_large_expands_to_8_teachers_and_96_qat_jobs():
    table = load_table(REG / "glue_bert_large.toml")
    assert len(table.cells()) == 5 * 8
    jobs = table.jobs()
    assert len(jobs) == 8 + 96
    assert [j.role for j in jobs] == ["teacher"] * 8 + ["qat"] * 96
    position = {j.hash: i for i, j in enumerate(jobs)}
    for j in jobs[8:]:
        assert position[j.teacher.hash] < 8 and j.config["teacher"] == j.teacher.hash
        assert (j.teacher.config["task"], j.teacher.config["model"]) == (j.config["task"], j.config["model"])
        assert len(j.cells) == 1 and j.seed in (42, 52, 62)
    assert sorted(j.config["task"] for j in jobs[:8]) == sorted(GLUE)
    assert {j.seed for j in jobs[:8]} == {42}
    assert len({j.hash for j in jobs}) == 104


def test_cell_addressing_and_full_prec_cells_are_teacher_jobs():
    table = load_table(REG / "glue_bert_large.toml")
    cell = table.cell("glue_bert_large/map_output/rte")
    assert cell is table.cell("map_output/rte")
    assert (cell.address, cell.row_label, cell.column_label) == ("glue_bert_large/map_output/rte", "Map+Output", "RTE")
    assert cell.published["score"].mean == 68.83 and cell.published["score"].std == 1.45
    with pytest.raises(KeyError, match="glue_bert_large/map_output/wnli"):
        table.cell("glue_bert_large/map_output/wnli")
    jobs = table.jobs()
    for j in jobs[:8]:
        assert j.cells == [f"glue_bert_large/full_prec/{j.config['task']}"]
        assert j.config == table.cell(j.cells[0]).config
    per_cell = {}
    for j in jobs[8:]:
        per_cell.setdefault(j.cells[0], []).append(j.seed)
    assert len(per_cell) == 32 and all(s == [42, 52, 62] for s in per_cell.values())


def test_resolved_config_fills_task_presets_and_protocol_defaults():
    table = load_table(REG / "glue_bert_large.toml")
    cfg = table.cell("map_output/rte").config
    assert (cfg["role"], cfg["method"], cfg["params"]) == ("qat", "map+output", {"gamma": 1.0, "form": 1})
    assert cfg["model"]["name"] == "bert-large-uncased" and cfg["model"]["family"] == "bert"
    assert "note" not in cfg["model"]
    assert (cfg["quant"], cfg["quant_overrides"]) == ("kim2022_w2a8", {})
    # SPEC §1.2: RTE max_len 128, batch 32, eval every 20 (P1); CoLA 64 / 16 / 50; MNLI eval 8000
    t = cfg["train"]
    assert (t["lr"], t["epochs"], t["optimizer"], t["warmup"], t["weight_decay"]) == (2e-5, 3, "bertadam", 0.1, 0.01)
    assert (t["max_len"], t["batch_size"], t["eval_interval"]) == (128, 32, 20)
    t = table.cell("baseline/cola").config["train"]
    assert (t["max_len"], t["batch_size"], t["eval_interval"]) == (64, 16, 50)
    assert table.cell("map/mnli").config["train"]["eval_interval"] == 8000
    assert cfg["protocol"] == Protocol().resolved("encoder")
    assert cfg["protocol"]["act_clip"] == 2.5 and "tsld_tau" not in cfg["protocol"]
    teacher = table.cell("full_prec/rte").config
    assert cfg["teacher"] == config_hash(teacher)
    assert teacher["role"] == "teacher" and teacher["seed"] == 42 and teacher["protocol"] == {}
    tt = teacher["train"]
    assert (tt["optimizer"], tt["selection"], tt["batch_size"], tt["lr"]) == ("adamw", "last", 32, 2e-5)


def test_teachers_shared_across_tables_of_the_same_model():
    def teachers(name):
        table = load_table(REG / f"{name}.toml")
        return {(j.config["model"]["name"], j.config["task"]): j.hash for j in table.jobs() if j.role == "teacher"}
    base, large = teachers("glue_bert_base"), teachers("glue_bert_large")
    sweep, ti = teachers("glue_gamma_sweep"), teachers("ti_glue_bert_base")
    assert len(base) == len(large) == len(ti) == 8 and len(sweep) == 16
    assert ti == base and sweep == {**base, **large}
    assert not set(base.values()) & set(large.values())


def test_gamma_sweep_rows_and_ti_rows():
    sweep = load_table(REG / "glue_gamma_sweep.toml")
    assert len(sweep.rows) == 18 and len(sweep.columns) == 16
    assert sweep.cell("u1_g0.1/base_rte").config["params"] == {"gamma": 0.1, "form": 1}
    assert sweep.cell("u2_g0.9/large_mrpc").config["params"] == {"gamma": 0.9, "form": 2}
    assert sweep.cell("u2_g0.9/large_mrpc").config["model"]["name"] == "bert-large-uncased"
    assert len(sweep.jobs()) == 16 + 18 * 16 * 3
    ti = load_table(REG / "ti_glue_bert_base.toml")
    assert [ti.cell(f"{r}/cola").config["params"] for r in ("ternarybert", "ti_m", "ti_o", "ti_g")] == \
        [{"schedule": s} for s in ("none", "M", "O", "GRAD")]
    assert {c.config["method"] for c in ti.cells()} == {"ti"}
    assert ti.cell("ti_g/rte").config["protocol"]["eval_protocol"] == "p2"


def test_klue_table_loads_but_every_job_is_unavailable():
    table = load_table(REG / "klue_ulm_large.toml")
    jobs = table.jobs()
    assert len(jobs) == 3 + 4 * 3 * 3
    assert all(j.unavailable and "not public" in j.unavailable for j in jobs)
    assert all(j.config["model"]["available"] is False for j in jobs)


def test_job_filters():
    table = load_table(REG / "glue_bert_base.toml")
    jobs = table.jobs(rows=["map"], columns=["rte", "cola"], seeds=[52])
    assert [(j.role, j.config["task"]) for j in jobs] == \
        [("teacher", "rte"), ("teacher", "cola"), ("qat", "rte"), ("qat", "cola")]
    assert [j.seed for j in jobs[2:]] == [52, 52]
    assert [j.cells for j in jobs[:2]] == [[], []]          # dependencies only: no Full-Prec cell selected
    only_fp = table.jobs(rows=["full_prec"])
    assert len(only_fp) == 8 and all(j.role == "teacher" and j.cells for j in only_fp)


# ------------------------------------------------------------------ hashing
def test_hash_is_sha256_of_canonical_json():
    assert config_hash({"b": 1.0, "a": [1, 2.5]}) == hashlib.sha256(b'{"a":[1,2.5],"b":1}').hexdigest()[:12]
    assert config_hash({"a": 1, "b": {"y": 2, "x": "s"}}) == config_hash({"b": {"x": "s", "y": 2}, "a": 1})
    table = load_table(REG / "glue_bert_base.toml")
    for j in table.jobs()[::13]:
        text = canonical_json(j.config)
        assert " " not in text.replace("Full-Prec", "") and json.loads(text) == j.config
        assert j.hash == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert _hashes(table) == _hashes(load_table(REG / "glue_bert_base.toml"))


@pytest.mark.parametrize("old,new", [
    ("lr = 2e-5\nepochs = 3\noptimizer = \"bertadam\"", "lr = 3e-5\nepochs = 3\noptimizer = \"bertadam\""),
    ("params = { gamma = 0.5 }", "params = { gamma = 0.6 }"),
    ("params = { gamma = 0.5 }", "params = { gamma = 0.5, form = 2 }"),
    ("quant = \"kim2022_w2a8\"", "quant = { preset = \"kim2022_w2a8\", act_bits = 4 }"),
    ("seeds = [1, 2]", "seeds = [3, 4]"),
    ("model = \"tiny-bert\"", "model = \"minilm-l6\""),
    ("[defaults.train]", PROTO.format("act_clip = 4.0")),
    ("[defaults.train]", PROTO.format('selection = "last"')),
    ("[defaults.train]", "[defaults.train]\nmax_len = 32"),
])
def test_any_config_change_changes_every_affected_hash(tmp_path, old, new):
    assert old in TINY
    base = {j.cells[0] if j.cells else j.config["task"]: j for j in _load(tmp_path, TINY).jobs()}
    changed = _load(tmp_path, TINY.replace(old, new), "u.toml").jobs()
    qat_old = {j.hash for j in base.values() if j.role == "qat"}
    qat_new = {j.hash for j in changed if j.role == "qat"}
    assert len(qat_new) == 4 and not qat_old & qat_new


def test_teacher_change_changes_teacher_and_its_students(tmp_path):
    a = _load(tmp_path, TINY).jobs()
    text = TINY.replace("optimizer = \"adamw\"\nwarmup = 0.0", "optimizer = \"adamw\"\nwarmup = 0.1")
    b = _load(tmp_path, text, "u.toml").jobs()
    assert not {j.hash for j in a} & {j.hash for j in b}


def test_presentation_fields_do_not_change_hashes(tmp_path):
    base = _hashes(_load(tmp_path, TINY))
    for old, new in (("label = \"RTE\"", "label = \"Recognising TE\""), ("notes = [\"a note\"]", "notes = []"),
                     ("title = \"t\"", "title = \"other\""), ("std = 1.0", "std = 2.0"),
                     ("params = { gamma = 0.5 }", "params = { gamma = 0.5, form = 1 }")):   # form 1 is the default
        assert _hashes(_load(tmp_path, TINY.replace(old, new), "u.toml")) == base, new
    # the table id is presentation too: the same cell in another table is the same job
    assert _hashes(_load(tmp_path, TINY.replace("id = \"tiny\"", "id = \"other\""), "u.toml")) == base


# ------------------------------------------------------------------ inheritance, steps, overrides
def test_inheritance_order_and_cell_overrides(tmp_path):
    text = TINY.replace("task = \"cola\"", "task = \"cola\"\ntrain = { lr = 5e-5 }") + """
[[cells]]
row = "mo"
column = "rte"
train = { lr = 1e-4 }
seeds = [9]
protocol = { act_clip = 3.0 }

[[cells]]
row = "fp"
column = "cola"
skip = true
"""
    table = _load(tmp_path, text)
    assert table.cell("mo/rte").config["train"]["lr"] == 1e-4 and table.cell("mo/rte").seeds == (9,)
    assert table.cell("mo/rte").config["protocol"]["act_clip"] == 3.0
    assert table.cell("mo/cola").config["train"]["lr"] == 5e-5 and table.cell("mo/cola").seeds == (1, 2)
    with pytest.raises(KeyError):
        table.cell("fp/cola")
    assert [c.address for c in table.cells()] == ["tiny/fp/rte", "tiny/mo/rte", "tiny/mo/cola"]
    jobs = table.jobs()
    assert [j.role for j in jobs] == ["teacher", "teacher", "qat", "qat", "qat"]     # cola teacher still needed


def test_steps_from_train_size(tmp_path):
    table = _load(tmp_path, TINY)
    # rte column: train_size 100, batch 32 (RTE preset), 3 epochs: ceil(100/32)*3 = 12 (SPEC §6.1)
    assert table.cell("mo/rte").steps == 12
    # cola column: no train_size override, so the task's (8551, batch 16 preset): ceil(8551/16)*3 = 1605
    assert table.cell("mo/cola").steps == 1605
    assert table.cell("fp/rte").steps == 12      # teacher: batch 32 (RTE preset), ceil
    floor = _load(tmp_path, TINY.replace("[defaults.train]", PROTO.format('t_total = "floor"')), "u.toml")
    assert floor.cell("mo/rte").steps == 9       # TernaryBERT: floor(100/32)*3
    cap = "[defaults.train]\nmax_steps = 10\nmax_train_examples = 50"
    capped = _load(tmp_path, TINY.replace("[defaults.train]", cap), "v.toml")
    assert capped.cell("mo/rte").steps == 6      # ceil(50/32)*3 = 6 < 10
    five = _load(tmp_path, TINY, "w.toml", max_steps=5)
    assert five.cell("mo/rte").steps == 5 and five.cell("mo/rte").config["train"]["max_steps"] == 5
    assert five.cell("fp/rte").config["train"]["max_steps"] == 5
    assert not set(_hashes(five)) & set(_hashes(table))


# ------------------------------------------------------------------ decoder tables
DECODER = """
[table]
id = "dec"
title = "t"
paper = "p"
table = "T"
source = "s"
kind = "decoder"

[defaults]
task = "ptb"
seeds = [42]

[defaults.train]
lr = 1e-4
epochs = 2
optimizer = "adamw"
warmup = 0.0
weight_decay = 0.0

[defaults.teacher]
lr = 1e-4
epochs = 3
optimizer = "adamw"
warmup = 0.0
weight_decay = 0.0
selection = "best"

[[rows]]
id = "fp16"
label = "FP16"
role = "teacher"

[[rows]]
id = "w2_tsld"
label = "W2A16 TSLD"
method = "tsld"
quant = "tsld_w2a16"

[[rows]]
id = "w4_optq"
label = "W4A16 OPTQ"
role = "ptq"
method = "optq"
params = { bits = 4 }
protocol = { granularity = "row" }

[[columns]]
id = "gpt2"
label = "GPT-2 tiny"
model = "tiny-gpt2"

[[columns]]
id = "opt"
label = "OPT tiny"
model = "tiny-opt"
train = { lr = 5e-5 }

[published]
"w2_tsld.opt" = [{ mean = 75.0, std = 1.0, metric = "acc" }, { mean = 14.6, metric = "ppl" }]

[published_avg]
"w2_tsld" = { value = 20.0, metric = "ppl" }
"""


def test_decoder_table_roles_metrics_and_protocol(tmp_path):
    table = _load(tmp_path, DECODER)
    assert set(table.published) == {("w2_tsld", "opt", "acc"), ("w2_tsld", "opt", "ppl")}
    assert table.published[("w2_tsld", "opt", "ppl")].mean == 14.6
    assert table.published_avg[("w2_tsld", "ppl")].value == 20.0
    cfg = table.cell("w2_tsld/opt").config
    assert cfg["protocol"] == Protocol().resolved("decoder")
    assert set(cfg["protocol"]) == set(Protocol.switches("decoder")) and "act_clip" not in cfg["protocol"]
    assert (cfg["train"]["lr"], cfg["train"]["batch_size"], cfg["train"]["max_len"], cfg["train"]["eval_interval"]) == \
        (5e-5, 4, 512, None)
    teacher = table.cell("fp16/opt").config
    assert teacher["protocol"] == {"precision": "fp32", "piqa_split": "validation"}
    assert teacher["train"]["selection"] == "best" and cfg["teacher"] == config_hash(teacher)
    ptq = table.cell("w4_optq/gpt2").config
    assert ptq["role"] == "ptq" and "train" not in ptq and ptq["params"] == {"bits": 4}
    assert ptq["protocol"]["granularity"] == "row" and ptq["teacher"] == config_hash(table.cell("fp16/gpt2").config)
    jobs = table.jobs()
    assert [j.role for j in jobs] == ["teacher", "teacher", "qat", "qat", "ptq", "ptq"]


def test_encoder_switch_in_decoder_table_is_an_error(tmp_path):
    with pytest.raises(RegistryError) as info:
        _load(tmp_path, DECODER.replace("protocol = { granularity = \"row\" }", "protocol = { act_clip = 2.0 }"))
    assert (info.value.cell, info.value.field) == ("rows[w4_optq]", "protocol.act_clip")


# ------------------------------------------------------------------ protocol
def test_protocol_defaults_are_the_official_code():
    p = Protocol()
    assert (p.act_clip, p.attn_internal_quant, p.soft_ce, p.output_site, p.selection) == \
        (2.5, True, "sum_classes", "post_ln", "best")
    assert (p.eval_protocol, p.eval_at, p.t_total, p.data_augmentation, p.pair_selection) == \
        ("p1", "t_total-1", "ceil", False, "acc")
    assert (p.precision, p.granularity, p.conv1d_rows, p.tsld_tau, p.tsld_batch, p.tsld_variant) == \
        ("fp32", "tensor", "output", 10.0, "sum", "both")
    assert p.piqa_split == "validation" and p.ti_step1_len is None
    for name in Protocol.model_fields:
        assert "§" in Protocol.describe(name), name
    enc, dec = set(Protocol.switches("encoder")), set(Protocol.switches("decoder"))
    assert enc & dec == {"selection"} and enc | dec == set(Protocol.model_fields)
    assert Protocol.switches("decoder", teacher=True) == ["precision", "piqa_split"]


def test_protocol_rejects_unknown_switches_and_bad_values():
    with pytest.raises(ValidationError, match="act_clp"):
        Protocol(act_clp=2.0)
    with pytest.raises(ValidationError, match="soft_ce"):
        Protocol(soft_ce="max")
    with pytest.raises(ValueError, match="does not apply to encoder"):
        Protocol(tsld_tau=5.0).check_kind("encoder")
    with pytest.raises(ValueError, match="unknown protocol switch 'nope'"):
        Protocol.describe("nope")
    assert Protocol(act_clip=4.0).overrides() == {"act_clip": 4.0}
