"""The CLI ``python -m runners.run`` (runners.run, runners.job; DESIGN.md §5): dry runs write nothing
and import no torch, malformed tables exit 2 naming file / cell / field with nothing written, a model
that cannot be loaded fails only its own jobs (exit 1, listed in the summary), unavailable models are
refused up front, and ``--max-steps`` caps every job under its own hash.

Every test points ``KDQAT_RESULTS`` at a temporary folder and checks what lands there.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runners import job as runner
from runners import records
from runners import run as run_cli
from runners.registry import load_table

REPO = Path(__file__).resolve().parents[1]
BAD = REPO / "tests" / "data" / "bad_registry"
BAD_FILES = sorted(BAD.glob("*.toml"))


@pytest.fixture
def results(tmp_path, monkeypatch):
    """An empty results folder (not created) that the runner writes to."""
    root = tmp_path / "results"
    monkeypatch.setenv("KDQAT_RESULTS", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    return root


def tiny_table(tmp_path: Path, columns: str, epochs: int = 1) -> Path:
    """A one-row (Map+Output) table of tiny-bert-sized jobs on toy_cls; ``columns``: TOML text."""
    path = tmp_path / "tiny.toml"
    path.write_text(f"""
[table]
id = "tiny"
title = "tiny runner table"
paper = "-"
table = "test"
source = "synthetic"
kind = "encoder"

[defaults]
model = "tiny-bert"
task = "toy_cls"
quant = "kim2022_w2a8"
seeds = [1]

[defaults.train]
lr = 5e-4
epochs = {epochs}
optimizer = "bertadam"
warmup = 0.1
weight_decay = 0.01
eval_interval = 4
max_train_examples = 64
max_dev_examples = 32

[defaults.teacher]
lr = 3e-3
epochs = {epochs}
optimizer = "adamw"
warmup = 0.0
weight_decay = 0.0
batch_size = 16
max_train_examples = 64
max_dev_examples = 32

[[rows]]
id = "full_prec"
label = "FP"
role = "teacher"

[[rows]]
id = "mo"
label = "Map+Output"
method = "map+output"
{columns}""")
    return path


TOY = '\n[[columns]]\nid = "toy"\nlabel = "toy"\n'


# ------------------------------------------------------------------ dry run
def test_dry_run_lists_every_job_and_writes_nothing(results, capsys):
    table = REPO / "registry" / "glue_bert_large.toml"
    jobs = load_table(table).jobs()
    assert run_cli.main([str(table), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{len(jobs)} jobs (8 teachers)" and len(jobs) == 104
    assert [line.split()[0] for line in out[:-1]] == [j.hash for j in jobs]
    rte_teacher = next(line for line in out if line.endswith("glue_bert_large/full_prec/rte"))
    assert "teacher  teacher=-" in rte_teacher and "steps=   234" in rte_teacher   # ceil(2490/32)·3
    assert not results.exists()


def test_dry_run_imports_no_torch(results):
    code = ("import sys; from runners.run import main; "
            "rc = main(['registry/glue_bert_large.toml', '--dry-run']); "
            "print('TORCH', 'torch' in sys.modules, rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120).stdout
    assert out.splitlines()[-1] == "TORCH False 0"
    assert not results.exists()


def test_torch_free_names_still_resolve():
    import kdqat.quant as q
    from kdqat.quant import compression, functions, modules, spec
    from kdqat.quant import compression_rate, quantize_model, ternary
    assert spec.GRANULARITIES == functions.GRANULARITIES       # the torch-free copy matches
    assert (ternary, compression_rate) == (functions.ternary, compression.compression_rate)
    assert q.QuantLinear is modules.QuantLinear and callable(quantize_model)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        q.nope  # noqa: B018


# ------------------------------------------------------------------ malformed tables
def _expectation(path: Path) -> tuple[str, str, str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    cell, field, fragment = (x.strip() for x in first[len("# expect: "):].split("|", 2))
    return cell, field, fragment


def test_there_are_56_malformed_files():
    assert len(BAD_FILES) == 56


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_cli_malformed_table_exits_2_and_writes_nothing(path, results, capsys):
    cell, field, fragment = _expectation(path)
    assert run_cli.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: {cell}: {field}: ") and fragment in err
    assert not results.exists()


def test_cli_unknown_row_filter_exits_2(results, capsys):
    assert run_cli.main([str(REPO / "registry" / "glue_bert_base.toml"), "--rows", "mapp"]) == 2
    assert ": -: rows: unknown row id 'mapp'" in capsys.readouterr().err
    assert not results.exists()


# ------------------------------------------------------------------ unavailable models
def test_hub_model_fails_fast_other_jobs_run(tmp_path, results, capsys):
    cols = TOY + '\n[[columns]]\nid = "base"\nlabel = "bert-base"\nmodel = "bert-base-uncased"\n'
    path = tiny_table(tmp_path, cols)
    jobs = {(j.role, j.cells[0].split("/")[2]): j for j in load_table(path).jobs()}
    assert len(jobs) == 4
    assert run_cli.main([str(path), "--no-mlflow"]) == 1
    out = capsys.readouterr().out
    for key in (("teacher", "toy"), ("qat", "toy")):
        assert records.read_result(jobs[key].hash, results)["status"] == "done"
    fail = records.read_failure(jobs[("teacher", "base")].hash, results)
    assert fail["status"] == "unavailable" and fail["wall_s"] < 30
    assert fail["error"].startswith("ModelUnavailable: model 'bert-base-uncased' (google-bert/bert-base-uncased) "
                                    "cannot be loaded: not in the local cache")
    assert "hf download google-bert/bert-base-uncased" in fail["error"] and "HF_HOME" in fail["error"]
    qat = records.read_failure(jobs[("qat", "base")].hash, results)
    assert qat["status"] == "unavailable" and qat["error"] == fail["error"]   # blocked by its teacher
    assert "tiny: 2/4 jobs done" in out
    assert "  unavailable: tiny/full_prec/base: ModelUnavailable: model 'bert-base-uncased'" in out
    assert "  unavailable: tiny/mo/base: ModelUnavailable: model 'bert-base-uncased'" in out


def test_unavailable_model_is_refused_up_front(results, monkeypatch, capsys):
    monkeypatch.setattr(runner, "_run", lambda *a, **k: pytest.fail("an unavailable job was started"))
    table = REPO / "registry" / "klue_ulm_large.toml"
    jobs = load_table(table).jobs()
    assert len(jobs) == 39 and all(j.unavailable for j in jobs)
    assert run_cli.main([str(table), "--no-mlflow"]) == 1
    out = capsys.readouterr().out
    for j in jobs:
        fail = records.read_failure(j.hash, results)
        assert fail["status"] == "unavailable" and "ULM-large (Korean, 280M)" in fail["error"]
        assert records.read_result(j.hash, results) is None
    assert "klue_ulm_large: 0/39 jobs done" in out
    assert out.count("  unavailable: klue_ulm_large/") == 39
    assert run_cli.main([str(table), "--dry-run", "--columns", "nsmc"]) == 0
    assert all(line.endswith("[unavailable]") for line in capsys.readouterr().out.splitlines()[:-1])


# ------------------------------------------------------------------ --max-steps
def test_max_steps_caps_every_job_under_new_hashes(tmp_path, results, capsys):
    path = tiny_table(tmp_path, TOY, epochs=2)            # 4 steps per epoch, 8 uncapped
    full = load_table(path).jobs()
    capped = load_table(path, max_steps=3).jobs()
    assert [j.steps for j in full] == [8, 8] and [j.steps for j in capped] == [3, 3]
    assert not {j.hash for j in full} & {j.hash for j in capped}
    assert run_cli.main([str(path), "--max-steps", "3", "--dry-run"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[:-1]] == [j.hash for j in capped]
    assert run_cli.main([str(path), "--max-steps", "3", "--no-mlflow"]) == 0
    for j in capped:
        rec = records.read_result(j.hash, results)
        assert rec["steps"] == 3 and rec["config"]["train"]["max_steps"] == 3
        assert [s for s, _ in rec["curves"]["train_loss"]] == [1, 2, 3]
    assert all(records.read_result(j.hash, results) is None for j in full)
