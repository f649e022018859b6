"""MLflow UI path end to end: run a tiny table (tiny BERT on toy_cls: a teacher and two QAT seeds, a
few steps each) into a tmp results dir with ``MLFLOW_TRACKING_URI=sqlite:///<tmp>/mlflow.db``, start
``mlflow server`` on that database on 127.0.0.1 (free port, ``--workers 1``, job execution off;
ASSETS.md), wait for ``/health``, find the table's runs through the REST API (experiments/get-by-name,
runs/search) with tags table/row/column/seed/job_hash and the record's score, then stop the server by
killing its process group and check the group is gone. Every wait is bounded.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from runners import records
from runners import run as run_cli
from runners.registry import load_table

TABLE = """
[table]
id = "mlflow_tiny"
title = "MLflow server test"
paper = "test"
table = "T"
source = "test"
kind = "encoder"

[defaults]
model = "tiny-bert"
task = "toy_cls"
quant = "kim2022_w2a8"
seeds = [1, 2]

[defaults.train]
lr = 1e-3
epochs = 1
optimizer = "bertadam"
warmup = 0.0
weight_decay = 0.0
max_steps = 2
eval_interval = 2
max_train_examples = 32
max_dev_examples = 32

[defaults.teacher]
lr = 1e-3
epochs = 1
optimizer = "adamw"
warmup = 0.0
weight_decay = 0.0
max_steps = 2
eval_interval = 2
max_train_examples = 32
max_dev_examples = 32

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
"""
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None, timeout: float = 10.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        text = r.read().decode()
    return json.loads(text) if text.strip().startswith("{") else {"text": text}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it after STOP_TIMEOUT_S; reap the leader."""
    pgid = proc.pid                                   # start_new_session: the server leads its group
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while group_alive(pgid) and time.monotonic() < deadline:
        proc.poll()
        time.sleep(0.2)
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=STOP_TIMEOUT_S)


def test_runs_are_found_through_the_mlflow_server(tmp_path, monkeypatch):
    root = tmp_path / "results"
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("KDQAT_RESULTS", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    path = tmp_path / "mlflow_tiny.toml"
    path.write_text(TABLE)
    assert run_cli.main([str(path)]) == 0
    jobs = load_table(path).jobs()
    assert len(jobs) == 3
    expected = {}
    for j in jobs:
        _, row, column = j.cells[0].split("/")
        rec = records.read_result(j.hash, root)
        expected[j.hash] = ({"table": "mlflow_tiny", "row": row, "column": column, "seed": str(j.seed),
                             "job_hash": j.hash}, rec["score"])

    port, log = free_port(), (tmp_path / "server.log").open("wb")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", db, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--artifacts-destination", str(tmp_path / "artifacts")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}"
            try:
                if http(f"{base}/health", timeout=2).get("text", "").strip() == "OK":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server not healthy in time"
            time.sleep(0.5)
        exp = http(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=mlflow_tiny")["experiment"]
        runs = http(f"{base}/api/2.0/mlflow/runs/search",
                    {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        got = {}
        for r in runs:
            tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
            metrics = {m["key"]: m["value"] for m in r["data"]["metrics"]}
            got[tags["job_hash"]] = ({k: tags[k] for k in ("table", "row", "column", "seed", "job_hash")},
                                     metrics["score"])
            assert r["info"]["status"] == "FINISHED"
        assert got == expected
        assert {g[0]["row"] for g in got.values()} == {"full_prec", "map"}
    finally:
        stop(proc)
        log.close()
    assert proc.returncode is not None and not group_alive(proc.pid)
