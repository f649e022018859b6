"""Decoder recipes (SPEC §7): full-precision LM fine-tune (teacher and student initialisation) and
W4A16/W2A16 QAT-KD with logit / logit+gt / l2l+logit / tsld / gt / tsld_only.

Training follows the HF Trainer defaults of the official scripts (SPEC §7.2): AdamW ε 1e-8, no
weight decay, linear decay without warm-up, global grad-norm clip 1.0, batch 4 of 512-token
blocks; perplexity on the validation blocks before training and after every epoch, best epoch
reported (SPEC §7.4). The FP fine-tune keeps its best epoch's weights (SPEC §7.1). Precision
("fp32" default, SPEC §12.7, or "bf16") is a protocol switch applied to teacher and student.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from kdqat import train as loop

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def lm_blocks(task_name: str, tokenizer, family: str, train_cfg: dict, seed: int) -> dict:
    """{"train": LongTensor[n, T], "validation": LongTensor[m, T]} for an LM task."""
    from kdqat.data.tasks import get_task
    task = get_task(task_name)
    block = int(train_cfg.get("block_size") or task.max_len)
    mod, fn = task.loader.split(":")
    f = getattr(importlib.import_module(mod), fn)
    if task_name == "ptb":
        splits = f(tokenizer, family, block_size=block)
    elif task.is_offline and tokenizer is not None:
        splits = f(tokenizer, block_size=block, seed=0)  # the split is data, not a training seed
    else:
        splits = f(task, tokenizer)
    val = "validation" if "validation" in splits else "dev"
    tr, va = splits["train"], splits[val]
    if train_cfg.get("max_train_examples"):
        tr = tr[: int(train_cfg["max_train_examples"])]
    if train_cfg.get("max_dev_examples"):
        va = va[: int(train_cfg["max_dev_examples"])]
    return {"train": tr, "validation": va}


def loop_config(cfg: dict, n_train: int) -> loop.LoopConfig:
    t = cfg["train"]
    bs = int(t.get("batch_size", 4))
    spe = loop.steps_per_epoch(n_train, bs)
    total = spe * int(t.get("epochs", 3))
    if t.get("max_steps"):
        total = min(total, int(t["max_steps"]))
    return loop.LoopConfig(lr=float(t["lr"]), batch_size=bs, optimizer="adamw",
                           warmup=float(t.get("warmup", 0.0)), weight_decay=float(t.get("weight_decay", 0.0)),
                           max_grad_norm=float(t.get("max_grad_norm", 1.0)),
                           eval_every=int(t.get("eval_interval") or spe), eval_at_start=True, eval_at="end",
                           higher_is_better=False, keep_best_weights=cfg["role"] == "teacher" and t.get("selection", "best") == "best",
                           checkpoint_every=int(t.get("checkpoint_every", 0)), seed=int(cfg["seed"]),
                           phases=[loop.Phase("train", total, total)])


def _eval_fn(model, blocks, bs):
    from kdqat.perplexity import block_perplexity

    def fn():
        m = block_perplexity(model, blocks, batch_size=bs)
        return {"ppl": float(m["ppl"]), "loss": float(m["loss"]), "selection": float(m["ppl"]),
                "report": float(m["ppl"])}
    return fn


def run(cfg: dict, jdir: Path, teacher_dir: Path | None, device: str, ckpt, on_log=None) -> dict:
    """Run a decoder job (role "teacher" or "qat") and return the loop result."""
    from transformers import AutoModelForCausalLM

    from kdqat.models import get_entry, load_model, load_tokenizer
    name = cfg["model"]["name"] if isinstance(cfg["model"], dict) else cfg["model"]
    entry = get_entry(name)
    protocol = cfg.get("protocol", {})
    dtype = DTYPES[protocol.get("precision", "fp32")]
    tok = load_tokenizer(name)
    data = lm_blocks(cfg["task"], tok, entry["family"], cfg["train"], int(cfg["seed"]))
    train = {"input_ids": data["train"].to(device)}
    lcfg = loop_config(cfg, train["input_ids"].shape[0])
    val = data["validation"].to(device)

    if cfg["role"] == "teacher":
        model = load_model(name, head="lm", attn_implementation="sdpa").to(device=device, dtype=dtype)

        def loss_fn(batch, phase, step):
            return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss, {}

        res = loop.train(model, train, lcfg, loss_fn, _eval_fn(model, val, lcfg.batch_size), ckpt, on_log)
        model.save_pretrained(jdir / "model")
        return res

    from kdqat.kd.methods import build_method
    from kdqat.quant import quantize_model
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, attn_implementation="sdpa", dtype=dtype).to(device)
    student = AutoModelForCausalLM.from_pretrained(teacher_dir, attn_implementation="sdpa", dtype=dtype).to(device)
    teacher.eval().requires_grad_(False)
    qkw = {k: protocol[k] for k in ("granularity", "conv1d_rows") if k in protocol}
    report = quantize_model(student, cfg.get("quant", "tsld_w2a16"), **qkw, **(cfg.get("quant_overrides") or {}))
    method = build_method(cfg["method"], dict(cfg.get("params", {})), protocol)
    needs = set(method.needs)

    def loss_fn(batch, phase, step):
        ids = batch["input_ids"]
        if needs:
            tcap.clear(), scap.clear()
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits
        s_logits = student(input_ids=ids).logits
        t = {"logits": t_logits, **(tcap.records if needs else {})}
        s = {"logits": s_logits, **(scap.records if needs else {})}
        return method(s, t, {"labels": ids})

    if needs:
        from kdqat.capture import Capture
        with Capture(teacher, record=needs) as tcap, Capture(student, record=needs) as scap:
            res = loop.train(student, train, lcfg, loss_fn, _eval_fn(student, val, lcfg.batch_size), ckpt, on_log)
    else:
        res = loop.train(student, train, lcfg, loss_fn, _eval_fn(student, val, lcfg.batch_size), ckpt, on_log)
    res["quant_report"] = report.to_dict() if hasattr(report, "to_dict") else str(report)
    return res
