"""The offline demo tables (registry/demo_minilm_rt.toml, registry/demo_gpt2_text.toml).

* Both validate and expand to 1 teacher + 4 rows x 3 seeds QAT jobs, every QAT job reading the
  one teacher (shared by hash), on the real offline models/tasks; the CLI dry run lists them.
* The GPT-2 demo model is config-built with the real GPT-2 BPE (vocab 50257, "Hello world" ->
  [15496, 995]) and a tied, unquantized lm_head under the table's quant preset.
* A heavily capped copy of each table (``--max-steps 2``, a few examples, one seed; the copy only
  changes caps, batch and length) runs end to end on the real assets: every job "done", scores
  finite, a teacher model written, a second run does nothing.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from runners import records
from runners import run as run_cli
from runners.registry import load_table

REPO = Path(__file__).resolve().parents[1]
MINILM = REPO / "registry" / "demo_minilm_rt.toml"
GPT2 = REPO / "registry" / "demo_gpt2_text.toml"
ROWS = {MINILM: {"baseline": "ternarybert", "map": "map", "output": "output", "map_output": "map+output"},
        GPT2: {"logit": "logit", "logit_gt": "logit+gt", "l2l_logit": "l2l+logit", "tsld": "tsld"}}


def capped_copy(src: Path, dst: Path, sections: dict[str, dict]) -> Path:
    """Copy a table file, setting ``key = value`` in the named sections (replaced or appended)."""
    out, section, todo = [], None, {s: dict(kv) for s, kv in sections.items()}

    def flush():
        for k, v in todo.get(section, {}).items():
            out.append(f"{k} = {v}")
        todo.pop(section, None)

    for line in src.read_text().splitlines():
        head = re.match(r"^\[+([^\]]+)\]+\s*(#.*)?$", line)
        if head:
            flush()
            section = head.group(1).strip()
        m = re.match(r"^(\w+)\s*=", line)
        if m and m.group(1) in todo.get(section, {}):
            line = f"{m.group(1)} = {todo[section].pop(m.group(1))}"
        out.append(line)
    flush()
    assert not todo, f"sections not found in {src.name}: {sorted(todo)}"
    dst.write_text("\n".join(out) + "\n")
    return dst


@pytest.mark.parametrize("path", [MINILM, GPT2])
def test_table_expands_to_one_shared_teacher_and_twelve_qat_jobs(path):
    table = load_table(path)
    jobs = table.jobs()
    teachers = [j for j in jobs if j.role == "teacher"]
    qat = [j for j in jobs if j.role == "qat"]
    assert len(jobs) == 13 and len(teachers) == 1 and len(qat) == 12
    (t,) = teachers
    assert t.cells == [f"{table.id}/{r.id}/{table.columns[0].id}" for r in table.rows if r.role == "teacher"]
    assert all(j.teacher is t and j.config["teacher"] == t.hash for j in qat)
    assert len({j.hash for j in qat}) == 12
    by_row = {}
    for j in qat:
        row = j.cells[0].split("/")[1]
        by_row.setdefault(row, []).append(j)
    assert {r: {j.config["method"] for j in js} for r, js in by_row.items()} == \
        {r: {m} for r, m in ROWS[path].items()}
    assert all(sorted(j.seed for j in js) == [42, 52, 62] for js in by_row.values())
    # capped steps differ only in the cap: every job keeps its row, the teacher stays shared
    capped = load_table(path, max_steps=2).jobs()
    assert [j.role for j in capped] == [j.role for j in jobs]
    assert {j.hash for j in capped}.isdisjoint({j.hash for j in jobs})


def test_minilm_demo_is_the_offline_w2a8_setup():
    table = load_table(MINILM)
    t = table.cell("full_prec/rt").config
    assert (t["model"]["name"], t["model"]["asset"], t["task"]) == ("minilm-l6", "minilm", "rt_polarity")
    q = table.cell("map/rt").config
    assert q["quant"] == "kim2022_w2a8" and q["teacher"] == table.jobs()[0].hash


def test_gpt2_demo_model_uses_the_real_gpt2_tokenizer_and_keeps_lm_head_fp():
    from kdqat.models import CATALOGUE, load_model, load_tokenizer
    from kdqat.quant import quantize_model
    table = load_table(GPT2)
    cfg = table.cell("tsld/text").config
    assert cfg["model"]["name"] == "gpt2-demo" and cfg["model"]["tokenizer"] == "gpt2"
    assert cfg["quant"] == "tsld_w2a16" and cfg["task"] == "lm_text"
    tok = load_tokenizer("gpt2-demo")
    assert len(tok) == 50257 and tok("Hello world")["input_ids"] == [15496, 995]
    assert CATALOGUE["gpt2-demo"]["config"]["vocab_size"] == len(tok)
    model = load_model("gpt2-demo", head="lm")
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.vocab_size) == (4, 256, 4, 50257)
    assert model.lm_head.weight is model.transformer.wte.weight          # tied
    n = sum(p.numel() for p in model.parameters())
    assert n == 50257 * 256 + 256 * 256 + 4 * (12 * 256 * 256 + 13 * 256) + 2 * 256   # = 16,107,520
    assert abs(n / 1e9 - CATALOGUE["gpt2-demo"]["params_b"]) < 1e-4
    report = quantize_model(model, "tsld_w2a16")
    names = report.names()
    assert not any("lm_head" in q or "wte" in q for q in names)
    assert len(names) == 4 * 4                                          # c_attn, c_proj, c_fc, mlp.c_proj per layer


def test_cli_dry_run_lists_the_jobs(capsys):
    for path in (MINILM, GPT2):
        assert run_cli.main([str(path), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert out.strip().splitlines()[-1] == "13 jobs (1 teachers)"


CAPS = {
    MINILM: {"defaults.train": {"batch_size": 4, "max_len": 16, "max_train_examples": 8, "max_dev_examples": 8,
                                "eval_interval": 1},
             "defaults.teacher": {"batch_size": 4, "max_len": 16, "max_train_examples": 8, "max_dev_examples": 8}},
    GPT2: {"defaults.train": {"batch_size": 2, "max_train_examples": 4, "max_dev_examples": 2},
           "defaults.teacher": {"batch_size": 2, "max_train_examples": 4, "max_dev_examples": 2,
                                "eval_interval": 1}},
}


@pytest.mark.parametrize("path", [MINILM, GPT2], ids=["minilm", "gpt2"])
def test_capped_table_runs_end_to_end_on_the_real_assets(path, tmp_path, monkeypatch):
    monkeypatch.setenv("KDQAT_RESULTS", str(tmp_path / "results"))
    copy = capped_copy(path, tmp_path / path.name, CAPS[path])
    argv = [str(copy), "--max-steps", "2", "--seeds", "42", "--no-mlflow"]
    assert run_cli.main(argv) == 0
    jobs = load_table(copy, max_steps=2).jobs(seeds=[42])
    assert len(jobs) == 5
    for j in jobs:
        rec = records.read_result(j.hash)
        assert rec is not None and rec["status"] == "done", j.cells
        assert rec["steps"] == 2 and len(rec["curves"]["train_loss"]) == 2
        assert math.isfinite(rec["score"]) and all(math.isfinite(v) for _, v in rec["curves"]["train_loss"])
        if path is MINILM:
            assert 0.0 <= rec["score"] <= 100.0
        else:
            assert 1.0 < rec["score"] < 2 * 50257                         # perplexity of a near-random LM
    assert (records.job_dir(jobs[0].hash) / "model" / "config.json").exists()
    monkeypatch.setattr("runners.job._run", lambda *a, **k: pytest.fail("a finished job ran again"))
    assert run_cli.main(argv) == 0
