"""End to end on the smoke tables (tiny models, synthetic data, CPU): the runner trains the teacher
and every QAT row, writes records and MLflow runs, a second invocation runs nothing, and the
numbers equal the pinned golden values (``tests/data/golden_smoke.json``) bit for bit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners import records
from runners import run as run_cli
from runners.registry import load_table

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "golden_smoke.json"
TABLES = ["smoke_encoder", "smoke_ti", "smoke_decoder"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    mp = pytest.MonkeyPatch()
    mp.setenv("KDQAT_RESULTS", str(root))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    codes = {t: run_cli.main([str(REPO / "registry" / f"{t}.toml")]) for t in TABLES}
    yield root, codes
    mp.undo()


def _scores(root: Path, table: str) -> dict:
    t = load_table(REPO / "registry" / f"{table}.toml")
    out = {}
    for j in t.jobs():
        rec = records.read_result(j.hash, root)
        assert rec is not None, f"{table}: job {j.hash} ({', '.join(j.cells)}) has no result"
        for cell in j.cells:
            out[f"{cell}/seed{j.seed}"] = {"score": rec["score"], "score_last": rec["score_last"],
                                            "final_train_loss": rec["curves"]["train_loss"][-1][1]}
    return out


@pytest.mark.parametrize("table", TABLES)
def test_table_runs_and_matches_golden(results, table):
    root, codes = results
    assert codes[table] == 0
    got = _scores(root, table)
    golden = json.loads(GOLDEN.read_text())[table]
    assert sorted(got) == sorted(golden)
    for cell, vals in golden.items():
        for k, v in vals.items():
            assert got[cell][k] == v, f"numeric drift in {cell} {k}: golden {v!r}, now {got[cell][k]!r}"


def test_second_invocation_runs_nothing(results, monkeypatch):
    root, _ = results
    from runners import job as runner
    monkeypatch.setattr(runner, "_run", lambda *a, **k: pytest.fail("a finished job was run again"))
    for t in TABLES:
        assert run_cli.main([str(REPO / "registry" / f"{t}.toml"), "--no-mlflow"]) == 0


def test_mlflow_has_one_run_per_job(results):
    import mlflow
    root, _ = results
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    for t in TABLES:
        table = load_table(REPO / "registry" / f"{t}.toml")
        exp = client.get_experiment_by_name(t)
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        hashes = {r.data.tags["job_hash"] for r in runs}
        assert len(hashes) == len(runs), f"{t}: a job was mirrored twice"
        # every QAT job is mirrored in its table's experiment; a teacher shared with an earlier
        # table (smoke_ti reuses smoke_encoder's) is mirrored where it ran
        assert {j.hash for j in table.jobs() if j.role != "teacher"} <= hashes <= {j.hash for j in table.jobs()}, t
        assert all("dev_selection" in r.data.metrics for r in runs)
