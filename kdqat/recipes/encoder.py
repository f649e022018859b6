"""Encoder recipes: the Full-Prec teacher fine-tune and W2A8 QAT-KD from it (SPEC §1, §4.1, §5, §6).

``finetune`` is the HF run_glue recipe (SPEC §1.3: 3 epochs; AdamW; the teacher is the final
model). ``qat_kd`` initialises teacher AND student from the same fine-tuned checkpoint, quantizes
the student, and distils with a named method of ``kdqat.kd.methods``; with a TI schedule it runs
the two-step plan of SPEC §5.3. Each takes an ``EncoderJob`` (the resolved registry cell) and
returns the loop's result dict plus the final metrics.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from kdqat import train as loop
from kdqat.data.tasks import TaskSpec, get_task
from kdqat.recipes.data import encoder_data, model_inputs


@dataclass
class EncoderJob:
    model: str
    task: str
    seed: int
    train: dict                      # lr, epochs, batch_size, optimizer, warmup, weight_decay, max_steps...
    protocol: dict = field(default_factory=dict)
    method: str | None = None        # None: full-precision fine-tune (teacher)
    params: dict = field(default_factory=dict)
    quant: str = "kim2022_w2a8"
    quant_overrides: dict = field(default_factory=dict)
    model_extra: dict | None = None  # a table's own [models] entries


def predict(model, data: dict, batch_size: int = 128) -> torch.Tensor:
    """Logits [N, C] (regression: [N]) of ``model`` on an encoder split, no grad."""
    outs = []
    for i in range(0, data["input_ids"].shape[0], batch_size):
        b = {k: v[i:i + batch_size] for k, v in data.items()}
        outs.append(model(**model_inputs(b)).logits.float())
    z = torch.cat(outs)
    return z.squeeze(-1) if z.shape[-1] == 1 else z


def make_eval_fn(model, task: TaskSpec, devs: list[dict]):
    """Dev evaluation: {"selection", "report", <metric keys>} (SPEC §6.4); extra dev splits prefixed."""
    from kdqat.evaluation import compute_metrics, score

    def fn():
        out = {}
        for prefix, dev in zip(task.dev_prefixes, devs):
            z = predict(model, dev)
            preds = z if task.kind == "regression" else z.argmax(-1)
            m = compute_metrics(task, preds.cpu().numpy(), dev["labels"].cpu().numpy())
            out.update({prefix + k: float(v) for k, v in m.items()})
            if not prefix:
                out["selection"], out["report"] = (float(x) for x in score(task, m))
        return out
    return fn


def loop_config(job: EncoderJob, task: TaskSpec, n_train: int, teacher: bool) -> loop.LoopConfig:
    """Steps, schedule and evaluation cadence (SPEC §6.1, §6.4; teacher: HF run_glue defaults)."""
    t = job.train
    bs = int(t.get("batch_size") or task.batch_size)
    spe = loop.steps_per_epoch(n_train, bs, job.protocol.get("t_total", "ceil"))
    total = spe * int(t.get("epochs", 3))
    if t.get("max_steps"):
        total = min(total, int(t["max_steps"]))
    phases = [loop.Phase("train", total, total)]
    ti = job.params.get("schedule") if job.method == "ti" else None
    if ti and ti != "none":
        s = int(job.protocol.get("ti_step1_len") or (120 if task.name == "cola" else 60))
        s = min(s, max(1, total // 2))
        phases = [loop.Phase("ti_step1", s, s, evaluate=False), loop.Phase("ti_step2", total - s, total - s)]
    eval_every = int(t.get("eval_interval") or task.eval_every(job.protocol.get("eval_protocol", "p1")))
    return loop.LoopConfig(
        lr=float(t.get("lr", 2e-5)), batch_size=bs,
        optimizer=t.get("optimizer", "adamw" if teacher else "bertadam"),
        warmup=float(t.get("warmup", 0.0 if teacher else 0.1)),
        weight_decay=float(t.get("weight_decay", 0.0 if teacher else 0.01)),
        max_grad_norm=float(t.get("max_grad_norm", 1.0)), eval_every=eval_every,
        eval_at=job.protocol.get("eval_at", "t_total-1"), checkpoint_every=int(t.get("checkpoint_every", 0)),
        seed=job.seed, phases=phases)


def finetune(job: EncoderJob, model, tokenizer, ckpt_path=None, on_log=None) -> dict:
    """Full-precision fine-tune of ``model`` (mutated in place) on the job's task."""
    task = get_task(job.task)
    data = encoder_data(task, tokenizer, job.train, job.seed, next(model.parameters()).device)
    cfg = loop_config(job, task, data["train"]["input_ids"].shape[0], teacher=True)
    if job.train.get("selection", "last") == "last":
        cfg.eval_every = 10**9  # run_glue evaluates the final model only (SPEC §1.3)
        cfg.eval_at = "end"
    else:
        cfg.keep_best_weights = True

    def loss_fn(batch, phase, step):
        return model(**model_inputs(batch), labels=_labels(task, batch)).loss, {}

    return loop.train(model, data["train"], cfg, loss_fn, make_eval_fn(model, task, data["dev"]),
                      ckpt_path, on_log)


def _labels(task, batch):
    return batch["labels"].float() if task.kind == "regression" else batch["labels"]


def qat_kd(job: EncoderJob, teacher, student, tokenizer, ckpt_path=None, on_log=None) -> dict:
    """QAT-KD of ``student`` (already initialised from the teacher checkpoint) — SPEC §10."""
    from kdqat.capture import Capture
    from kdqat.intervention import ti_mode
    from kdqat.kd.methods import build_method
    from kdqat.quant import quantize_model

    task = get_task(job.task)
    data = encoder_data(task, tokenizer, job.train, job.seed, next(student.parameters()).device)
    cfg = loop_config(job, task, data["train"]["input_ids"].shape[0], teacher=False)
    protocol = {**job.protocol, "task_type": task.kind}
    method = build_method(job.method, {k: v for k, v in job.params.items() if k != "schedule"}, protocol)
    report = quantize_model(student, job.quant, act_clip=protocol.get("act_clip", 2.5), **job.quant_overrides)
    teacher.eval().requires_grad_(False)
    schedule = job.params.get("schedule", "none")
    t_needs = set(method.needs) | ({"probs", "context", "attn_output"} if schedule != "none" else set())
    act_bits = report.act_bits if protocol.get("attn_internal_quant", True) else None
    s_len = cfg.phases[0].steps

    with Capture(teacher, record=t_needs) as tcap, \
            Capture(student, record=method.needs, act_quant_bits=act_bits,
                    act_quant_clip=report.act_clip) as scap:
        def loss_fn(batch, phase, step):  # records reset at every forward (kdqat.capture)
            inputs = model_inputs(batch)
            with torch.no_grad():
                t_logits = teacher(**inputs).logits
            # STOCHASTIC draws from a per-step generator, so a resumed job replays the same modes
            rng = random.Random(job.seed * 100_003 + step)
            mode = ti_mode(schedule, step, s_len, rng) if phase == "ti_step1" else None
            scap.intervene(mode, tcap.records if mode else None)
            s_logits = student(**inputs).logits
            t = {"logits": t_logits, **tcap.records}
            s = {"logits": s_logits, **scap.records}
            return method(s, t, {"labels": _labels(task, batch), "lengths": batch["lengths"],
                                 "attention_mask": batch["attention_mask"]})

        def on_phase(name):
            scap.intervene(None, None)

        eval_fn = make_eval_fn(student, task, data["dev"])

        def eval_clean():
            scap.intervene(None, None)
            return eval_fn()

        result = loop.train(student, data["train"], cfg, loss_fn, eval_clean, ckpt_path, on_log, on_phase)
    result["quant_report"] = report.to_dict() if hasattr(report, "to_dict") else str(report)
    return result
