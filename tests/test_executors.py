"""Executors (``runners.executors``): the dependency-aware pool on fake jobs; a tiny table through
``local --workers 2`` (with a worker SIGKILLed mid-job, then resumed), submitit's local executor
and a local Ray instance, each ending with every record present exactly once, mirrored once, and
metrics and curves bitwise equal to the sequential in-process run; ``resources`` in the registry
never change job hashes; the ``--estimate`` cost model on hand-computed numbers."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from runners import estimate, executors, records, worker
from runners import run as run_cli
from runners.registry import load_table

REPO = Path(__file__).resolve().parents[1]

# tiny-bert on toy_cls: a teacher and two QAT jobs (Map, seeds 1 and 2) with checkpoints every 4 steps
TABLE = """
[table]
id = "exec_tiny"
title = "executors test"
paper = "-"
table = "-"
source = "synthetic"
kind = "encoder"

[defaults]
model = "tiny-bert"
quant = "kim2022_w2a8"
seeds = [1, 2]

[defaults.train]
lr = 5e-4
epochs = 2
optimizer = "bertadam"
warmup = 0.1
weight_decay = 0.01
eval_interval = 6
max_steps = 12
checkpoint_every = 4

[defaults.teacher]
lr = 3e-3
epochs = 1
max_steps = 8
optimizer = "adamw"
warmup = 0.0
weight_decay = 0.0
batch_size = 16

[[rows]]
id = "full_prec"
label = "Full-Prec"
role = "teacher"

[[rows]]
id = "map"
label = "Map"
method = "map"

[[columns]]
id = "toy"
label = "toy_cls"
task = "toy_cls"
"""
COMPARED = ("status", "metrics", "score", "score_last", "curves", "steps")
# A worker that SIGKILLs itself right after writing the first checkpoint of the job named in argv[1].
KILLER = ("import os, signal, sys\n"
          "from kdqat import checkpoint\n"
          "from runners import worker\n"
          "target, save = sys.argv.pop(1), checkpoint.save\n"
          "def dying_save(path, state):\n"
          "    save(path, state)\n"
          "    if target in str(path):\n"
          "        os.kill(os.getpid(), signal.SIGKILL)\n"
          "checkpoint.save = dying_save\n"
          "sys.exit(worker.main(sys.argv[1:]))\n")


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("table") / "exec_tiny.toml"
    p.write_text(TABLE)
    return p


@pytest.fixture(scope="module")
def jobs(table_path):
    return load_table(table_path).jobs()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, jobs):
    """The sequential in-process run (the default executor): {hash: record}."""
    root = tmp_path_factory.mktemp("seq")
    calls = []
    executors.LocalExecutor(workers=1, root=root).run(jobs, lambda j, r: calls.append(j.hash))
    assert calls == [j.hash for j in jobs]          # teachers first, each job once
    return {j.hash: records.read_result(j.hash, root) for j in jobs}


def _assert_matches(root: Path, jobs, reference):
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted(j.hash for j in jobs)
    for j in jobs:
        rec = records.read_result(j.hash, root)
        assert rec is not None and records.read_failure(j.hash, root) is None, j.cells
        for k in COMPARED:
            assert rec[k] == reference[j.hash][k], f"{j.cells} {k} differs from the sequential run"


def test_reference_is_nontrivial(reference, jobs):
    teacher, qat = jobs[0], jobs[1:]
    assert teacher.role == "teacher" and all(j.teacher is teacher for j in qat) and len(qat) == 2
    assert [reference[j.hash]["steps"] for j in jobs] == [8, 12, 12]
    assert reference[qat[0].hash]["curves"] != reference[qat[1].hash]["curves"]   # seeds differ


# ------------------------------------------------------------------ the pool, on fake jobs
def _fake(h, teacher=None):
    return SimpleNamespace(hash=h, teacher=teacher, cells=[h], config={"seed": 0, "role": "qat"}, role="qat")


def test_drive_runs_teachers_first_within_slots(tmp_path, monkeypatch):
    t1, t2 = _fake("t1"), _fake("t2")
    js = [t1, t2, _fake("a", t1), _fake("b", t2), _fake("c", t1), _fake("boom", t1)]
    log, running, peak = [], [], []
    ended = {}

    def launch(j):
        if j.hash == "boom":
            raise RuntimeError("no GPU")
        log.append(("start", j.hash))
        running.append(j.hash)
        peak.append(len(running))
        return j.hash

    def wait(handles):
        h = handles[0]                       # the oldest running job ends first
        running.remove(h)
        log.append(("end", h))
        ended[h] = True
        return h, ("killed" if h == "b" else None)

    monkeypatch.setattr(worker, "outcome", lambda j, root, crashed: {"job": j.hash, "crashed": crashed})
    got = []
    out = executors.drive(js, launch, wait, 2, lambda j, r: got.append(r), tmp_path)
    assert max(peak) == 2
    for j in js[2:5]:                         # a QAT job starts only after its teacher ended
        assert log.index(("start", j.hash)) > log.index(("end", j.teacher.hash))
    assert log[:3] == [("start", "t1"), ("start", "t2"), ("end", "t1")]
    assert {r["job"]: r.get("crashed") for r in out}["b"] == "killed"
    boom = next(r for r in out if r["job"] == "boom")
    assert boom["status"] == "failed" and boom["error"] == "not launched: RuntimeError: no GPU"
    assert json.loads((tmp_path / "runs" / "boom" / "failure.json").read_text())["error"] == boom["error"]
    assert sorted(r["job"] for r in got) == sorted(j.hash for j in js)


# ------------------------------------------------------------------ real jobs in subprocesses
def test_local_workers_kill_then_resume(tmp_path, table_path, jobs, reference, monkeypatch):
    victim = jobs[1]
    calls = []
    ex = executors.LocalExecutor(workers=2, root=tmp_path, threads=1, python=(sys.executable, "-c", KILLER, victim.hash))
    out = ex.run(jobs, lambda j, r: calls.append(j.hash))
    status = {r["job"]: r["status"] for r in out}
    assert status == {jobs[0].hash: "done", victim.hash: "failed", jobs[2].hash: "done"}
    fail = records.read_failure(victim.hash, tmp_path)
    assert fail["error"] == "worker exited with code -9"
    assert (records.job_dir(victim.hash, tmp_path) / "ckpt.pt").exists()
    kept = {j.hash: (records.job_dir(j.hash, tmp_path) / "result.json").read_bytes() for j in (jobs[0], jobs[2])}

    # the rerun, through the CLI, runs only the killed job, resuming from its checkpoint
    monkeypatch.setenv("KDQAT_RESULTS", str(tmp_path))
    mirrored = []
    monkeypatch.setattr("runners.tracking.mirror", lambda table, rec, cells: mirrored.append(rec["job"]))
    assert run_cli.main([str(table_path), "--workers", "2", "--threads", "1"]) == 0
    assert mirrored == [victim.hash]
    rec = records.read_result(victim.hash, tmp_path)
    assert rec["resumed_from"] == 4
    for h, raw in kept.items():
        assert (records.job_dir(h, tmp_path) / "result.json").read_bytes() == raw
    assert sorted(calls) == sorted(j.hash for j in jobs)
    _assert_matches(tmp_path, jobs, reference)


def test_submitit_local_executor(tmp_path, jobs, reference):
    calls = []
    ex = executors.SlurmExecutor(device="cpu", root=tmp_path, cluster="local", defaults={"cpus": 1, "hours": 0.25})
    ex.run(jobs, lambda j, r: calls.append(j.hash))
    assert calls[0] == jobs[0].hash and sorted(calls) == sorted(j.hash for j in jobs)   # teacher level first
    _assert_matches(tmp_path, jobs, reference)
    logs = list((tmp_path / "slurm").rglob("*_log.out"))
    assert len(logs) == 3


def test_ray_local_instance(tmp_path, jobs, reference, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    calls = []
    executors.RayExecutor(device="cpu", root=tmp_path, num_cpus=2).run(jobs, lambda j, r: calls.append(j.hash))
    assert calls[0] == jobs[0].hash and sorted(calls) == sorted(j.hash for j in jobs)
    _assert_matches(tmp_path, jobs, reference)


# ------------------------------------------------------------------ resources in the registry
RESOURCES = TABLE.replace('seeds = [1, 2]\n', 'seeds = [1, 2]\nresources = { gpus = 1, hours = 2.0 }\n') \
    .replace('role = "teacher"\n', 'role = "teacher"\nresources = { gpus = 2, device_plan = "ddp" }\n') \
    .replace('method = "map"\n', 'method = "map"\nresources = { cpus = 8, hours = 5.5 }\n')


def test_resources_merge_and_never_change_hashes(tmp_path, jobs):
    p = tmp_path / "r.toml"
    p.write_text(RESOURCES + '\n[[cells]]\nrow = "map"\ncolumn = "toy"\nresources = { mem_gb = 40 }\n')
    with_res = load_table(p).jobs()
    assert [j.hash for j in with_res] == [j.hash for j in jobs]
    assert [j.config for j in with_res] == [j.config for j in jobs]
    assert with_res[0].resources == {"gpus": 2, "hours": 2.0, "device_plan": "ddp"}
    assert with_res[1].resources == {"gpus": 1, "hours": 5.5, "cpus": 8, "mem_gb": 40.0}
    assert jobs[0].resources == {} and worker.plan(with_res[0]) == ("ddp", 2) and worker.plan(jobs[1]) == ("single", 1)


# ------------------------------------------------------------------ --estimate
def test_flop_model_on_hand_numbers():
    glue = load_table(REPO / "registry" / "glue_bert_base.toml")
    j = next(j for j in glue.jobs() if j.cells == ["glue_bert_base/map/rte"])
    assert j.steps == 234                               # ceil(2490 / 32) * 3
    n, tokens = 0.11e9, 234 * 32 * 128
    dev = 277 * 128 * (234 // 20 + 1)                   # 12 evaluations of the 277 dev examples
    want = (8 * n * tokens + 2 * n * dev) * 1.27
    assert estimate.flops(j.config, 234) == pytest.approx(want, rel=1e-12)
    c = estimate.job_cost(j, "h100", None, {}, Path("/nonexistent"))
    assert c["source"] == "flops" and c["gpu_h"] == pytest.approx(want / (67e12 * 0.30) / 3600, rel=1e-12)
    t = j.teacher                                       # teacher: 6N per token, one final evaluation
    assert estimate.flops(t.config, 234) == pytest.approx(6 * n * 234 * 32 * 128 + 2 * n * 277 * 128, rel=1e-12)


def test_estimate_uses_records_then_calibration(tmp_path, jobs):
    table = load_table(REPO / "registry" / "glue_bert_base.toml")
    rte = [j for j in table.jobs() if j.cells == ["glue_bert_base/map/rte"]]
    done, sibling = rte[0], rte[1]
    base = {"config": done.config, "steps": 234, "status": "done"}
    records.write_json_atomic(records.job_dir(done.hash, tmp_path) / "result.json",
                              {**base, "device": "cuda", "wall_s": 468.0})
    est = estimate.estimate(table, rte + [done.teacher], root=tmp_path, bench={})
    row = next(r for r in est["cells"] if r["cell"] == "glue_bert_base/map/rte")
    assert row["jobs"] == 3 and row["sources"] == {"done", "measured"}
    assert row["gpu_h"] == pytest.approx(3 * 468.0 / 3600)   # 2 s/step measured, x 234 steps, x 3 seeds
    assert estimate.job_cost(sibling, "h100", None, estimate.calibrations(tmp_path), tmp_path)["source"] == "measured"
    flops_only = estimate.job_cost(done.teacher, "h100", None, {}, tmp_path)["gpu_h"]
    assert est["total_gpu_h"] == pytest.approx(3 * 0.13 + flops_only)
    assert est["remaining_gpu_h"] == pytest.approx(2 * 0.13 + flops_only)
    text = estimate.render(est)
    assert "glue_bert_base/map/rte" in text and "MFU: fp32 0.30" in text and "67 TFLOPS" in text


def test_estimate_from_a_benchmark_calibration_file(tmp_path, monkeypatch):
    """Source 3: calibration/<gpu>.json (benchmarks/calibrate.py) prices steps and dev evaluations."""
    table = load_table(REPO / "registry" / "glue_bert_base.toml")
    rte = [j for j in table.jobs() if j.cells == ["glue_bert_base/map/rte"]]
    entry = {"model": "bert-base-uncased", "role": "qat", "method": "map", "quant": "kim2022_w2a8",
             "batch_size": 32, "max_len": 128, "s_per_step": 0.5, "eval_s_per_example": 0.01}
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "a100.json").write_text(json.dumps({"gpu": "A100 test", "entries": [entry]}))
    bench = estimate.benchmark("a100", tmp_path)
    assert bench["gpu"] == "A100 test" and len(bench["entries"]) == 1
    c = estimate.job_cost(rte[0], "a100", None, {}, tmp_path, bench)
    # 234 steps x 0.5 s + 12 evaluations (234 // 20 + 1) x 277 dev examples x 0.01 s
    assert c["source"] == "benchmark" and c["gpu_h"] == pytest.approx((234 * 0.5 + 12 * 277 * 0.01) / 3600, rel=1e-12)
    assert estimate.job_cost(rte[0].teacher, "a100", None, {}, tmp_path, bench)["source"] == "flops"
    est = estimate.estimate(table, rte, gpu="a100", root=tmp_path)
    assert est["total_gpu_h"] == pytest.approx(3 * c["gpu_h"]) and "A100 test" in estimate.render(est)
    # the committed H100 measurement is found from any results directory
    monkeypatch.setenv("KDQAT_RESULTS", str(tmp_path / "elsewhere"))
    h100 = estimate.benchmark("h100")
    assert h100["source"] == "results/calibration/h100.json" and "H100" in h100["gpu"]
    assert estimate.job_cost(rte[0], "h100", None, {}, tmp_path, h100)["source"] == "benchmark"


def test_cli_estimate_prints_the_table(capsys):
    assert run_cli.main([str(REPO / "registry" / "glue_bert_base.toml"), "--estimate", "--rows", "map"]) == 0
    out = capsys.readouterr().out
    assert out.count("glue_bert_base/map/") == 8 and "total" in out
