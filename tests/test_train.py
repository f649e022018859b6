"""Determinism and kill-and-resume of the training loop, end to end through ``runners.job.execute``
(kdqat.train, kdqat.checkpoint, kdqat.seed; DESIGN.md principle 4, SPEC §5.3, §6.1).

A tiny table (random 2-layer BERT, toy_cls capped at 128 training examples, batch 16: 8 steps per
epoch, 2 epochs = 16 steps, a checkpoint every 3 steps; TI step 1 = 6 steps) is run uninterrupted
once per module; every other run is compared with it bitwise: best/last metrics, the per-step
train-loss curve (floats) and the evaluation curve.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from runners import job as runner
from runners import records
from runners import run as run_cli
from runners.registry import load_table

REPO = Path(__file__).resolve().parents[1]


def table_text(epochs: int = 2) -> str:
    return f"""
[table]
id = "tiny"
title = "tiny resume table"
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
checkpoint_every = 3
max_train_examples = 128
max_dev_examples = 64

[defaults.teacher]
lr = 3e-3
epochs = 2
optimizer = "adamw"
warmup = 0.0
weight_decay = 0.0
batch_size = 16
max_train_examples = 128
max_dev_examples = 64

[defaults.protocol]
ti_step1_len = 6

[[rows]]
id = "full_prec"
label = "FP"
role = "teacher"

[[rows]]
id = "mo"
label = "Map+Output"
method = "map+output"

[[rows]]
id = "ti_g"
label = "TI-G"
method = "ti"
params = {{ schedule = "GRAD" }}

[[columns]]
id = "toy"
label = "toy"
task = "toy_cls"
"""


class Interrupt(Exception):
    """Raised from ``on_log`` to stop a job mid-way, as a crash would."""


def _interrupt_at(step: int):
    def on_log(kind, s, values):
        if kind == "train" and s == step:
            raise Interrupt(f"interrupted at step {s}")
    return on_log


def _same(a: dict, b: dict) -> None:
    """Two records of one job agree bitwise (compared as written to result.json)."""
    a, b = (json.loads(json.dumps(r, default=str)) for r in (a, b))
    assert a["status"] == b["status"] == "done"
    assert a["job"] == b["job"]
    assert a["metrics"] == b["metrics"]
    assert a["curves"] == b["curves"]       # every train loss (float) and every evaluation, bitwise
    assert (a["score"], a["score_last"], a["steps"]) == (b["score"], b["score_last"], b["steps"])


def _copy_teacher(src: Path, dst: Path, teacher_hash: str) -> None:
    shutil.copytree(records.job_dir(teacher_hash, src), records.job_dir(teacher_hash, dst))


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """(table path, {row: job}, reference root holding every job run once, uninterrupted)."""
    base = tmp_path_factory.mktemp("train")
    path = base / "tiny.toml"
    path.write_text(table_text())
    jobs = load_table(path).jobs()
    by_row = {j.cells[0].split("/")[1]: j for j in jobs}
    root = base / "ref"
    for j in jobs:
        assert runner.execute(j, root=root)["status"] == "done"
    return path, by_row, root


def test_table_shape(ref):
    _, jobs, root = ref
    assert [jobs[r].steps for r in ("full_prec", "mo", "ti_g")] == [16, 16, 16]
    rec = records.read_result(jobs["mo"].hash, root)
    assert rec["steps"] == 16 and rec["resumed_from"] is None
    assert [s for s, _ in rec["curves"]["train_loss"]] == list(range(1, 17))
    # evaluations every 4 steps and at t_total − 1 (SPEC §6.4 off-by-one)
    assert [s for s, _ in rec["curves"]["eval"]] == [4, 8, 12, 15, 16]
    # the TI job evaluates only in step 2 (6 + 4, 6 + 8, and 6 + 9 = t_total − 1 of its 10 steps)
    ti = records.read_result(jobs["ti_g"].hash, root)
    assert [s for s, _ in ti["curves"]["eval"]] == [10, 14, 15]
    assert not (records.job_dir(jobs["mo"].hash, root) / "ckpt.pt").exists()   # removed when done


def test_same_jobs_twice_are_bitwise_identical(ref, tmp_path):
    _, jobs, root = ref
    for row in ("full_prec", "mo"):
        _same(runner.execute(jobs[row], root=tmp_path), records.read_result(jobs[row].hash, root))
    from safetensors.torch import load_file
    wa = load_file(records.job_dir(jobs["full_prec"].hash, root) / "model" / "model.safetensors")
    wb = load_file(records.job_dir(jobs["full_prec"].hash, tmp_path) / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("row,stop,ckpt_step,ckpt_phase", [
    ("mo", 5, 3, 0),          # mid-run
    ("mo", 13, 12, 0),        # after the evaluation at 12, before t_total − 1
    ("ti_g", 4, 3, 0),        # inside TI step 1
    ("ti_g", 7, 6, 0),        # at the step-1/step-2 boundary: the checkpoint holds step 1's optimizer
    ("ti_g", 11, 9, 1),       # inside step 2
])
def test_interrupt_and_resume_is_bitwise(ref, tmp_path, row, stop, ckpt_step, ckpt_phase):
    _, jobs, root = ref
    job = jobs[row]
    _copy_teacher(root, tmp_path, job.teacher.hash)
    jdir = records.job_dir(job.hash, tmp_path)
    fail = runner.execute(job, root=tmp_path, on_log=_interrupt_at(stop))
    assert fail["status"] == "failed" and f"Interrupt: interrupted at step {stop}" in fail["error"]
    saved = torch.load(jdir / "ckpt.pt", weights_only=False)
    assert (saved["step"], saved["phase"]) == (ckpt_step, ckpt_phase)
    assert len(saved["curves"]["train_loss"]) == ckpt_step
    assert records.read_result(job.hash, tmp_path) is None and (jdir / "failure.json").exists()
    (jdir / "ckpt.pt.tmp999").write_bytes(b"half a checkpoint")    # what a kill mid-save leaves

    rec = runner.execute(job, root=tmp_path)
    assert rec["resumed_from"] == ckpt_step
    _same(rec, records.read_result(job.hash, root))
    # one record: the result, no failure, no checkpoint (nor half-written one) left; a rerun does not train
    assert sorted(p.name for p in jdir.iterdir()) == ["result.json"]
    assert runner.execute(job, root=tmp_path) == json.loads((jdir / "result.json").read_text())


def test_boundary_checkpoint_starts_step_two_with_a_fresh_optimizer(ref, tmp_path):
    """The checkpoint at the TI step-1/step-2 boundary holds step 1's BertAdam state (moments of
    6 steps); resuming must not load it into step 2's optimizer (SPEC §5.3: a fresh optimizer)."""
    _, jobs, root = ref
    job = jobs["ti_g"]
    _copy_teacher(root, tmp_path, job.teacher.hash)
    runner.execute(job, root=tmp_path, on_log=_interrupt_at(7))
    saved = torch.load(records.job_dir(job.hash, tmp_path) / "ckpt.pt", weights_only=False)
    assert saved["scheduler"]["last_epoch"] == 6 and len(saved["optimizer"]["state"]) > 0
    seen = []
    rec = runner.execute(job, root=tmp_path, on_log=lambda kind, s, v: seen.append((kind, s)))
    assert seen[0] == ("train", 7)       # resumed right after the boundary
    _same(rec, records.read_result(job.hash, root))


def test_real_sigkill_and_resume(ref, tmp_path):
    """``python -m runners.run`` killed with SIGKILL once a checkpoint exists, then run again: the
    result equals an uninterrupted run of the same job in another results folder."""
    _, jobs, root = ref
    path = tmp_path / "tiny6.toml"
    path.write_text(table_text(epochs=6))              # 48 steps: time to kill between checkpoints
    job = next(j for j in load_table(path).jobs(rows=["mo"]) if j.role == "qat")
    assert job.teacher.hash == jobs["full_prec"].hash   # same teacher as the module's table
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for r in (killed, clean):
        _copy_teacher(root, r, job.teacher.hash)
    env = {**os.environ, "KDQAT_RESULTS": str(killed), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    ckpt = records.job_dir(job.hash, killed) / "ckpt.pt"
    proc = subprocess.Popen([sys.executable, "-m", "runners.run", str(path), "--rows", "mo", "--no-mlflow"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert records.read_result(job.hash, killed) is None, "the job finished before it could be killed"
    step = torch.load(ckpt, weights_only=False)["step"]
    assert 3 <= step < 48 and step % 3 == 0

    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("KDQAT_RESULTS", str(killed))
        assert run_cli.main([str(path), "--rows", "mo", "--no-mlflow"]) == 0
    finally:
        mp.undo()
    rec = records.read_result(job.hash, killed)
    assert rec["resumed_from"] == step
    _same(rec, runner.execute(job, root=clean))
