"""Data parallelism inside one job (``kdqat.distributed``, ``runners.worker``): shards on hand
values; a tiny teacher + QAT job run as 2 gloo processes (torchrun, ``device_plan = "ddp"``) against
the same jobs in one process.

Tolerances (measured on this CPU: teacher 1.2e-7 loss and weights, QAT 3.0e-4 relative loss):
* teacher fine-tune (no dropout, mean CE, 16 = 2 x 8 rows): the all-reduced mean gradient is the
  full-batch gradient up to float summation order -> loss curve and weights within 1e-5;
* QAT-KD (W2A8): dynamic activation scales are per shard (kdqat.distributed, difference (a)) ->
  loss curve within 1e-2 relative; dev metrics equal.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from kdqat import distributed
from kdqat import train as loop
from runners import executors, records, worker
from runners.registry import load_table

NO_DROPOUT = ("{ model_type = \"bert\", vocab_size = 128, hidden_size = 32, num_hidden_layers = 2, "
              "num_attention_heads = 4, intermediate_size = 64, max_position_embeddings = 64, type_vocab_size = 2, "
              "hidden_dropout_prob = 0.0, attention_probs_dropout_prob = 0.0 }")
TABLE = f"""
[table]
id = "ddp_tiny"
title = "ddp test"
paper = "-"
table = "-"
source = "synthetic"
kind = "encoder"

[models.tiny-bert-nodrop]
family = "bert"
config = {NO_DROPOUT}

[defaults]
model = "tiny-bert-nodrop"
quant = "kim2022_w2a8"
seeds = [1]
RESOURCES

[defaults.train]
lr = 5e-4
epochs = 1
optimizer = "bertadam"
warmup = 0.1
weight_decay = 0.01
eval_interval = 4
max_steps = 8

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


def _table(tmp_path, resources: str):
    p = tmp_path / "t.toml"
    p.write_text(TABLE.replace("RESOURCES", resources))
    return load_table(p).jobs()


def test_shard_hand_values():
    batch = {"x": torch.arange(10).reshape(5, 2), "y": torch.tensor([7, 8, 9, 10, 11])}
    s0, s1 = distributed.shard(batch, 0, 2), distributed.shard(batch, 1, 2)
    assert s0["x"].tolist() == [[0, 1], [2, 3], [4, 5]] and s0["y"].tolist() == [7, 8, 9]
    assert s1["x"].tolist() == [[6, 7], [8, 9]] and s1["y"].tolist() == [10, 11]
    assert distributed.shard(batch, 0, 1)["y"].tolist() == [7, 8, 9, 10, 11]


def test_single_process_changes_nothing():
    ctx = distributed.Dist(rank=0, world=1, local_rank=0, device="cpu", backend=None)
    assert ctx.is_main and not distributed.Dist(1, 2, 1, "cpu", "gloo").is_main
    orig = loop.train
    with distributed.data_parallel(ctx):
        assert loop.train is orig


def test_fsdp_plan_is_refused(tmp_path):
    job = _table(tmp_path, 'resources = { gpus = 2, device_plan = "fsdp" }')[0]
    rec = worker.run_job(job, "cpu", tmp_path)
    assert rec["status"] == "failed" and "fsdp" in rec["error"] and "not implemented" in rec["error"]
    assert records.read_failure(job.hash, tmp_path)["error"] == rec["error"]


def _losses(rec):
    return torch.tensor([v for _, v in rec["curves"]["train_loss"]], dtype=torch.float64)


def test_two_gloo_processes_match_one_process(tmp_path):
    single = _table(tmp_path, "")
    ddp = _table(tmp_path, 'resources = { gpus = 2, device_plan = "ddp" }')
    assert [j.hash for j in ddp] == [j.hash for j in single]
    one, two = tmp_path / "one", tmp_path / "two"
    executors.LocalExecutor(root=one).run(single, lambda j, r: None)
    executors.LocalExecutor(root=two).run(ddp, lambda j, r: None)
    teacher, qat = single
    a = {j.hash: records.read_result(j.hash, one) for j in single}
    b = {j.hash: records.read_result(j.hash, two) for j in single}
    for h in a:
        assert b[h]["distributed"] == {"world": 2, "backend": "gloo", "plan": "ddp"} and "distributed" not in a[h]
        assert b[h]["metrics"] == a[h]["metrics"] and b[h]["steps"] == a[h]["steps"] == 8
        assert not (records.job_dir(h, two) / "rank1").exists()
    ta, tb = _losses(a[teacher.hash]), _losses(b[teacher.hash])
    assert (ta - tb).abs().max() < 1e-5
    wa = load_file(records.job_dir(teacher.hash, one) / "model" / "model.safetensors")
    wb = load_file(records.job_dir(teacher.hash, two) / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    qa, qb = _losses(a[qat.hash]), _losses(b[qat.hash])
    assert ((qa - qb).abs() / qa.abs()).max() < 1e-2
    assert not torch.equal(qa, qb)        # activation scales per shard: not bitwise, as documented


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_command_uses_torchrun(tmp_path, world):
    argv = worker.command(tmp_path / "j.pkl", "cpu", tmp_path, 4, world)
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", "-m"]
    assert argv[6:] == ["runners.worker", str(tmp_path / "j.pkl"), "--device", "cpu", "--root", str(tmp_path),
                        "--threads", "4"]
