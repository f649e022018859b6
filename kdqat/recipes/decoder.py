"""Decoder recipes (SPEC §7): full-precision fine-tune (teacher and student initialisation),
W4A16/W2A16 QAT-KD with logit / logit+gt / l2l+logit / tsld / gt / tsld_only, and PTQ rows
(:mod:`kdqat.recipes.ptq`), on LM tasks (PTB blocks, SPEC §7.2), instruction tasks (SPEC §7.5) and
GLUE-as-LM tasks (SPEC §7.6; both in :mod:`kdqat.recipes.instruct`).

Training follows the HF Trainer defaults of the official scripts (SPEC §7.2): AdamW ε 1e-8, no
weight decay, linear decay without warm-up, global grad-norm clip 1.0, batch 4; evaluation before
training and after every epoch, best epoch reported (SPEC §7.4). The FP fine-tune keeps its best
epoch's weights (SPEC §7.1). Protocol switches applied here: ``precision`` ("fp32" default,
SPEC §12.7, or "bf16": teacher, student and PTQ model in that dtype); ``granularity`` (SPEC §12.6)
for ternary weights only — 4-bit weights are always asymmetric per row (SPEC §2.4, "per_tensor is
ignored for 4-bit"), so it is not passed to a non-TWN preset; ``conv1d_rows`` (GPT-2, SPEC §9.23).

A task's data and scoring come as a :class:`TaskData`; LM tasks: ``train = {"input_ids": [n, T]}``
blocks, evaluation = block perplexity (:func:`kdqat.perplexity.block_perplexity`).
``sources`` (from the runner): ``data_dir`` — a folder whose ``<task name>/`` sub-folder, if
present, is a ``DatasetDict.save_to_disk`` copy of the task's hub data, used instead of the hub;
``lm_eval_tasks`` — a folder of lm-eval YAML templates (instruction tasks).
GPT-Neo computes attention outside transformers' AttentionInterface (and has no SDPA path: it runs
eager): methods that read attention (L2L) are refused before anything is loaded; the other methods
and PTQ work.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from kdqat import checkpoint
from kdqat import train as loop

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ATTN_IMPL = {"gpt_neo": "eager"}   # HF has no SDPA path for GPT-Neo; every other family: "sdpa"
ATTENTION_SITES = ("q", "k", "v", "scores", "probs", "context")


@dataclass
class TaskData:
    """``train``: loop data (tensors with a common first dim); ``evaluate(model) -> {"ppl", "loss",
    ..., "selection", "report"}`` every epoch; ``final(model) -> (metrics, raw)`` once after
    training (merged into best and last); ``info``: data provenance for the record."""
    train: dict
    evaluate: Callable
    higher_is_better: bool = False
    final: Callable | None = None
    info: dict = field(default_factory=dict)


def lm_blocks(task_name: str, tokenizer, family: str, train_cfg: dict, seed: int,
              data_path: str | None = None) -> dict:
    """{"train": LongTensor[n, T], "validation": LongTensor[m, T]} for an LM task."""
    from kdqat.data.tasks import get_task
    task = get_task(task_name)
    block = int(train_cfg.get("block_size") or train_cfg.get("max_len") or task.max_len)
    mod, fn = task.loader.split(":")
    f = getattr(importlib.import_module(mod), fn)
    if task_name == "ptb":
        splits = f(tokenizer, family, block_size=block, data_path=data_path)
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


def prepare_data(cfg: dict, tokenizer, family: str, sources: dict, workdir: Path) -> TaskData:
    """The :class:`TaskData` of the job's task (LM blocks here; other kinds in ``recipes.instruct``)."""
    from kdqat.data.tasks import get_task
    spec = get_task(cfg["task"])
    if spec.kind != "lm":
        from kdqat.recipes import instruct
        return instruct.prepare(cfg, spec, tokenizer, family, sources, workdir)
    from kdqat.perplexity import block_perplexity
    t = cfg.get("train") or {}
    data_dir = sources.get("data_dir")
    path = Path(data_dir) / spec.name if data_dir else None
    path = str(path) if path is not None and path.is_dir() else None
    blocks = lm_blocks(spec.name, tokenizer, family, t, int(cfg["seed"]), data_path=path)
    val, bs = blocks["validation"], int(t.get("batch_size") or spec.batch_size)

    def evaluate(model):
        m = block_perplexity(model, val, batch_size=bs)
        return {"ppl": float(m["ppl"]), "loss": float(m["loss"]), "selection": float(m["ppl"]),
                "report": float(m["ppl"])}
    return TaskData({"input_ids": blocks["train"]}, evaluate, False,
                    info={"task": spec.name, "data_path": path, "n_train": int(blocks["train"].shape[0]),
                          "n_eval": int(val.shape[0]), "block": int(val.shape[1])})


def loop_config(cfg: dict, n_train: int, higher_is_better: bool = False) -> loop.LoopConfig:
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
                           higher_is_better=higher_is_better,
                           keep_best_weights=cfg["role"] == "teacher" and t.get("selection", "best") == "best",
                           checkpoint_every=int(t.get("checkpoint_every", 0)), seed=int(cfg["seed"]),
                           phases=[loop.Phase("train", total, total)])


def quant_kwargs(cfg: dict) -> dict:
    """Keyword overrides for ``quantize_model``: the protocol's ``granularity`` for ternary presets
    only (module docstring), ``conv1d_rows``, then the cell's ``quant_overrides``."""
    from kdqat.quant import resolve_spec
    protocol, over = cfg.get("protocol", {}), dict(cfg.get("quant_overrides") or {})
    spec = resolve_spec(cfg.get("quant", "tsld_w2a16"), **over)
    kw = {"conv1d_rows": protocol["conv1d_rows"]} if "conv1d_rows" in protocol else {}
    if "granularity" in protocol and spec.weight.method in ("twn", "learned_twn"):
        kw["granularity"] = protocol["granularity"]
    return {**kw, **over}


def check_supported(family: str, method) -> None:
    """NotImplementedError for a KD method that reads attention internals on GPT-Neo."""
    reads = sorted(set(method.needs) & set(ATTENTION_SITES))
    if family == "gpt_neo" and reads:
        raise NotImplementedError(
            f"unsupported: KD method {method.name!r} needs the attention {', '.join(reads)} of every layer, "
            "but GPT-Neo computes attention inside GPTNeoSelfAttention, outside transformers' "
            "AttentionInterface, so kdqat.capture cannot read them. On GPT-Neo use logit, logit+gt, "
            "tsld, tsld_only, gt or a PTQ method.")


def _inputs(batch: dict):
    from kdqat.recipes.instruct import batch_inputs
    return batch_inputs(batch)


def _finish(res: dict, data: TaskData, model) -> dict:
    if data.final is not None:
        extra, raw = data.final(model)
        res["best"], res["last"] = {**res["best"], **extra}, {**res["last"], **extra}
        res["lm_eval"] = raw
    res["data"] = data.info
    return res


def run(cfg: dict, jdir: Path, teacher_dir: Path | None, device: str, ckpt, on_log=None,
        sources: dict | None = None) -> dict:
    """Run a decoder job (role "teacher", "qat" or "ptq") and return the loop result."""
    from transformers import AutoModelForCausalLM

    from kdqat.models import get_entry, load_model, load_tokenizer
    m = cfg["model"]
    name = m["name"] if isinstance(m, dict) else m
    extra = {name: m} if isinstance(m, dict) and "family" in m else None
    family = get_entry(name, extra)["family"]
    protocol = cfg.get("protocol", {})
    dtype = DTYPES[protocol.get("precision", "fp32")]
    attn = ATTN_IMPL.get(family, "sdpa")
    method = None
    if cfg["role"] == "qat":
        from kdqat.kd.methods import build_method
        method = build_method(cfg["method"], dict(cfg.get("params", {})), protocol)
        check_supported(family, method)
    tok = load_tokenizer(name, extra)
    data = prepare_data(cfg, tok, family, sources or {}, jdir)

    if cfg["role"] == "ptq":
        from kdqat.recipes.ptq import run_ptq
        res = run_ptq(cfg, teacher_dir, device, dtype, data, attn)
        return _finish(res, data, res.pop("model"))

    train = {k: v.to(device) for k, v in data.train.items()}
    lcfg = loop_config(cfg, train["input_ids"].shape[0], data.higher_is_better)

    if cfg["role"] == "teacher":
        model = load_model(name, head="lm", extra=extra, attn_implementation=attn).to(device=device, dtype=dtype)

        def loss_fn(batch, phase, step):
            ids, mask, labels = _inputs(batch)
            return model(input_ids=ids, attention_mask=mask, labels=labels).loss, {}

        res = loop.train(model, train, lcfg, loss_fn, lambda: data.evaluate(model), ckpt, on_log)
        checkpoint.save_pretrained(model, jdir / "model")
        return _finish(res, data, model)

    from kdqat.quant import quantize_model
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, attn_implementation=attn, dtype=dtype).to(device)
    student = AutoModelForCausalLM.from_pretrained(teacher_dir, attn_implementation=attn, dtype=dtype).to(device)
    teacher.eval().requires_grad_(False)
    from kdqat.distributed import prepare_teacher
    teacher = prepare_teacher(teacher)               # FSDP-sharded under device_plan "fsdp", else as is
    report = quantize_model(student, cfg.get("quant", "tsld_w2a16"), **quant_kwargs(cfg))
    needs = set(method.needs)

    def loss_fn(batch, phase, step):
        ids, mask, labels = _inputs(batch)
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=mask).logits
        s_logits = student(input_ids=ids, attention_mask=mask).logits
        t = {"logits": t_logits, **(tcap.records if needs else {})}
        s = {"logits": s_logits, **(scap.records if needs else {})}
        return method(s, t, {"labels": labels})

    def evaluate():
        return data.evaluate(student)

    if needs:
        from kdqat.capture import Capture
        with Capture(teacher, record=needs) as tcap, Capture(student, record=needs) as scap:
            res = loop.train(student, train, lcfg, loss_fn, evaluate, ckpt, on_log)
    else:
        res = loop.train(student, train, lcfg, loss_fn, evaluate, ckpt, on_log)
    res["quant_report"] = report.to_dict() if hasattr(report, "to_dict") else str(report)
    return _finish(res, data, student)
