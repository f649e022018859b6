"""Execute one job (cell × seed): build models and data, call the recipe, write the record.

A job config is the registry's fully resolved dict (``runners.registry``): role ("teacher" |
"qat" | "ptq" | "approx"; "ptq" is decoder-only, SPEC §7.8; "approx" (NN-LUT / I-BERT
non-linearities swapped into the FP teacher, ``kdqat.recipes.approx``) encoder-only), model,
task, method, params, quant, train, protocol, seed, kind ("encoder"|"decoder"). Decoder jobs
(``kdqat.recipes.decoder``) also get the data sources named by the environment: ``KDQAT_DATA_DIR`` (a folder with one
``DatasetDict.save_to_disk`` copy per task name, used instead of the hub) and
``KDQAT_LM_EVAL_TASKS`` (a folder of lm-eval YAML templates used instead of lm-eval's built-in
tasks); both are recorded in the result ("sources").
Failures never raise out of ``execute``: they become a ``failure.json`` with status
"unavailable" (model/data cannot be had here, or the registry marks the job ``unavailable``: such
a job is refused before anything is loaded) or "failed" (anything else), and the runner goes on.
"""
from __future__ import annotations

import os
import shutil
import time
import traceback
from pathlib import Path

from runners import records

UNAVAILABLE = ("ModelUnavailable", "DataUnavailable", "AssetUnavailable")


def _model_name(cfg: dict) -> str:
    m = cfg["model"]
    return m["name"] if isinstance(m, dict) else m


def _model_extra(cfg: dict) -> dict | None:
    m = cfg["model"]
    return {m["name"]: m} if isinstance(m, dict) and "family" in m else None


def data_sources() -> dict:
    """Local data sources for decoder jobs from the environment (module docstring)."""
    return {"data_dir": os.environ.get("KDQAT_DATA_DIR") or None,
            "lm_eval_tasks": os.environ.get("KDQAT_LM_EVAL_TASKS") or None}


PTQ_DATA_KEYS = ("batch_size", "max_len", "max_train_examples", "max_dev_examples")


def recipe_config(job) -> dict:
    """The config handed to the recipe: the job's, except that a PTQ or approx job (which has no
    training settings) takes its data settings from its teacher's ``train`` (``PTQ_DATA_KEYS``), so
    that it is calibrated and evaluated on the data its FP row was selected on."""
    cfg = job.config
    teacher = getattr(job, "teacher", None)
    if cfg["role"] not in ("ptq", "approx") or teacher is None:
        return cfg
    return {**cfg, "train": {k: v for k, v in teacher.config.get("train", {}).items() if k in PTQ_DATA_KEYS}}


def _run(cfg: dict, jdir: Path, teacher_dir: Path | None, device: str, on_log) -> dict:
    import torch

    from kdqat.models import load_model, load_tokenizer
    from kdqat.seed import seed_everything

    kind = cfg.get("kind", "encoder")
    name, extra = _model_name(cfg), _model_extra(cfg)
    seed_everything(int(cfg["seed"]))
    ckpt = jdir / "ckpt.pt"
    if kind == "decoder":
        from kdqat.recipes import decoder as recipe
        return recipe.run(cfg, jdir, teacher_dir, device, ckpt, on_log, sources=data_sources())
    from kdqat.data.tasks import get_task
    from kdqat.recipes import encoder as recipe
    task = get_task(cfg["task"])
    job = recipe.EncoderJob(model=name, task=cfg["task"], seed=int(cfg["seed"]), train=dict(cfg["train"]),
                            protocol=dict(cfg.get("protocol", {})), method=cfg.get("method"),
                            params=dict(cfg.get("params", {})), quant=cfg.get("quant", "kim2022_w2a8"),
                            quant_overrides=dict(cfg.get("quant_overrides") or {}),
                            model_extra=extra)
    tok = load_tokenizer(name, extra)
    if cfg["role"] == "teacher":
        model = load_model(name, head="cls", num_labels=task.num_labels, extra=extra).to(device)
        res = recipe.finetune(job, model, tok, ckpt, on_log)
        from kdqat import checkpoint
        checkpoint.save_pretrained(model, jdir / "model")
        return res
    from transformers import AutoModelForSequenceClassification as Auto
    if cfg["role"] == "approx":
        from kdqat.recipes.approx import run_approx
        model = Auto.from_pretrained(teacher_dir, attn_implementation="sdpa").to(device)
        return run_approx(cfg, model, tok, device, on_log)
    teacher = Auto.from_pretrained(teacher_dir, attn_implementation="sdpa").to(device)
    student = Auto.from_pretrained(teacher_dir, attn_implementation="sdpa").to(device)
    torch.manual_seed(int(cfg["seed"]))
    return recipe.qat_kd(job, teacher, student, tok, ckpt, on_log)


def execute(job, device: str = "cpu", root: Path | None = None, on_log=None) -> dict:
    """Run ``job`` unless its result exists; return its record (or failure record)."""
    done = records.read_result(job.hash, root)
    if done:
        return done
    jdir = records.job_dir(job.hash, root)
    jdir.mkdir(parents=True, exist_ok=True)
    cfg = job.config
    base = {"job": job.hash, "cells": list(job.cells), "config": cfg, "seed": cfg["seed"],
            "role": cfg["role"], "device": device}
    if getattr(job, "unavailable", None):  # e.g. ULM-large: refused up front, nothing is loaded
        fail = {**base, "status": "unavailable", "error": job.unavailable}
        records.write_json_atomic(jdir / "failure.json", fail)
        return fail
    teacher_dir = None
    if getattr(job, "teacher", None) is not None:
        teacher_dir = records.job_dir(job.teacher.hash, root) / "model"
        if records.read_result(job.teacher.hash, root) is None or not teacher_dir.exists():
            fail = {**base, "status": "blocked", "error": f"teacher job {job.teacher.hash} has no result"}
            tf = records.read_failure(job.teacher.hash, root)
            if tf and tf.get("status") == "unavailable":
                fail.update(status="unavailable", error=tf["error"])
            records.write_json_atomic(jdir / "failure.json", fail)
            return fail
    t0 = time.time()
    try:
        res = _run(recipe_config(job), jdir, teacher_dir, device, on_log)
    except Exception as e:  # noqa: BLE001 - every failure becomes a record; the sweep goes on
        status = "unavailable" if type(e).__name__ in UNAVAILABLE else "failed"
        fail = {**base, "status": status, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=8), "wall_s": time.time() - t0}
        records.write_json_atomic(jdir / "failure.json", fail)
        return fail
    record = {**base, "status": "done", "metrics": {"best": res["best"], "last": res["last"]},
              "score": res["best"]["report"], "score_last": res["last"]["report"],
              "curves": res["curves"], "steps": res["steps"], "resumed_from": res.get("resumed_from"),
              "quant_report": res.get("quant_report"), "protocol": cfg.get("protocol", {}),
              **({"data": res["data"], "sources": data_sources()} if "data" in res else {}),
              **({"lm_eval": res["lm_eval"]} if "lm_eval" in res else {}),
              "versions": records.versions(), "git_commit": records.git_commit(),
              "wall_s": res["wall_s"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    records.write_json_atomic(jdir / "result.json", record)
    for stale in ("failure.json", "ckpt.pt", *(p.name for p in jdir.glob("*.tmp*"))):  # + a kill's half-writes
        (jdir / stale).unlink(missing_ok=True)
    shutil.rmtree(jdir / "tmp", ignore_errors=True)
    return record
