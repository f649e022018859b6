"""Example-based decoder tasks: instruction tuning for reasoning (SPEC §7.5, §9.27-28, §12.9-10) and
GLUE-style classification as LM fine-tuning with OPT (SPEC §7.6, §12.11). Used by
:mod:`kdqat.recipes.decoder` for tasks of kind ``instruction`` and ``lm_cls``.

Data: the encoded examples of :mod:`kdqat.data.instruct` / :mod:`kdqat.data.lm_cls`, right-padded
once to the longest example (``input_ids`` with the pad id, ``labels`` with −100,
``attention_mask``), ``[N, S]`` each. Every batch is cut back to its own longest example
(:func:`batch_inputs`), as the official collator pads per batch; TSLD therefore sees the same
padded positions as the official code (−100 targets: ℓ^T = 0, still in the token softmax, §9.28).
Pad id = the tokenizer's pad token, else its EOS (LLaMA / GPT-2 have none; official: pad = eos).

Per-epoch evaluation on the eval split (instruction: the task's first dev split, PIQA per the
``piqa_split`` switch; lm_cls: GLUE validation):
  * ``ppl`` = exp(eval_loss), eval_loss = Σ_b B_b·ℓ_b / Σ_b B_b over eval batches b of
    ``batch_size`` examples in dataset order, ℓ_b = the HF loss of the batch (mean CE over its
    non-ignored targets), as the HF Trainer's ``eval_loss`` (SPEC §7.4);
  * lm_cls also: ``acc`` (x100) from :func:`kdqat.data.lm_cls.score_choices`, and ``mcc`` (x100) for
    CoLA; selection / report = the task's key (``acc``; CoLA ``mcc``, higher is better).
Instruction tasks select on ``ppl`` (lower is better); their zero-shot lm-eval accuracy is computed
ONCE, after training, on the model the job ends with (the teacher: its kept best epoch; a QAT
student: the last epoch, as the official run after the final epoch), and written into both the
best and the last metrics: ``acc`` (= lm-eval ``acc`` x100; GSM8K: ``exact_match`` of the
``strict-match`` filter x100) and ``acc_norm`` where the task has it; ``report`` = ``acc``.
lm-eval tasks: lm-eval's own ``piqa``, ``openbookqa``, ``arc_easy``, ``arc_challenge``, ``gsm8k``,
or, with ``sources["lm_eval_tasks"]``, the YAML templates of that folder (same task names,
rendered into the job folder by :func:`kdqat.lm_eval_bridge.render_task_dir`). For OPT the logits
are cut to the first 50257 entries (SPEC §7.5).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from kdqat.data.instruct import IGNORE_INDEX, collate

LM_EVAL_NAMES = {"piqa": "piqa", "openbookqa": "openbookqa", "arc_easy": "arc_easy",
                 "arc_challenge": "arc_challenge", "gsm8k": "gsm8k"}
OPT_VOCAB_LIMIT = 50257


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    return int(pid)


def pad_examples(examples: list[dict], pad: int) -> dict[str, torch.Tensor]:
    """``{"input_ids", "labels", "attention_mask"}`` ``[N, S_max]`` (right padding)."""
    if not examples:
        raise ValueError("no examples")
    return collate(examples, pad)


def batch_inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(input_ids, attention_mask, labels)`` of a loop batch. LM blocks (only ``input_ids``):
    ``(ids, None, ids)``; padded examples: every tensor cut to the batch's longest example."""
    ids = batch["input_ids"]
    if "attention_mask" not in batch:
        return ids, None, ids
    width = int(batch["attention_mask"].sum(1).max())
    return ids[:, :width], batch["attention_mask"][:, :width], batch["labels"][:, :width]


@torch.no_grad()
def example_perplexity(model, data: dict, batch_size: int) -> dict[str, float]:
    """``{"ppl", "loss"}`` of padded examples (module docstring); restores train/eval mode."""
    import math
    n = data["input_ids"].shape[0]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for start in range(0, n, batch_size):
            ids, mask, labels = batch_inputs({k: v[start:start + batch_size].to(device) for k, v in data.items()})
            if not (labels != IGNORE_INDEX).any():
                raise ValueError("an eval batch has no target token")
            total += float(model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss) * ids.shape[0]
    finally:
        model.train(was_training)
    loss = total / n
    return {"ppl": math.exp(loss), "loss": loss}


def load_examples(spec, tokenizer, max_len: int, data_path: str | None, piqa_split: str = "validation") -> dict:
    """``{"train": [...], "eval": [...]}`` encoded examples of an instruction or lm_cls task.

    ``piqa_split="test"`` reproduces the official quirk (SPEC §7.5, §9.27): PIQA is evaluated on
    its test split, whose labels are −1, so every answer becomes ``sol2``.
    """
    if spec.kind == "lm_cls":
        from kdqat.data.lm_cls import load_lm_cls_task
        return load_lm_cls_task(spec, tokenizer, max_len, data_path=data_path)
    from kdqat.data import instruct
    if spec.name != "piqa" or piqa_split == "validation":
        return instruct.load_instruction_task(spec.name, tokenizer, max_len, data_path=data_path)
    from kdqat.data.encoder import load_raw_splits
    raw = load_raw_splits(dataclasses.replace(spec, dev_splits=("test",)), data_path=data_path)
    test = [{**r, "label": 1 if r["label"] == -1 else r["label"]} for r in raw["test"]]
    return {"train": instruct.examples_from_records("piqa", raw["train"], tokenizer, max_len),
            "eval": instruct.examples_from_records("piqa", test, tokenizer, max_len)}


def lm_eval_scores(model, tokenizer, task: str, family: str, include_path=None, batch_size: int = 1,
                   limit=None) -> tuple[dict[str, float], dict]:
    """``(metrics, raw)``: ``{"acc", ["acc_norm"]}`` x100 (module docstring) and lm-eval's own dict."""
    from kdqat.lm_eval_bridge import evaluate_lm
    name = LM_EVAL_NAMES[task]
    vocab = model.get_output_embeddings().weight.shape[0]
    limit_v = OPT_VOCAB_LIMIT if family == "opt" and vocab > OPT_VOCAB_LIMIT else None
    raw = evaluate_lm(model, tokenizer, [name], include_path=include_path, batch_size=batch_size,
                      limit=limit, vocab_limit=limit_v)[name]
    for key in ("acc", "exact_match,strict-match", "exact_match"):
        if key in raw:
            out = {"acc": 100.0 * raw[key]}
            break
    else:
        raise ValueError(f"lm-eval task {name!r} returned no accuracy: {sorted(raw)}")
    if "acc_norm" in raw:
        out["acc_norm"] = 100.0 * raw["acc_norm"]
    return out, raw


def prepare(cfg: dict, spec, tokenizer, family: str, sources: dict, workdir: Path):
    """The :class:`kdqat.recipes.decoder.TaskData` of an instruction / lm_cls job (module docstring)."""
    from kdqat.recipes.decoder import TaskData
    if tokenizer is None:
        name = cfg["model"]["name"] if isinstance(cfg["model"], dict) else cfg["model"]
        raise ValueError(f"task {spec.name} needs a tokenizer; model {name!r} has none (a config-built "
                         f"tiny model: give it a tokenizer, e.g. a local model folder)")
    t = cfg.get("train") or {}
    bs = int(t.get("batch_size") or spec.batch_size)
    data_dir = sources.get("data_dir")
    data_path = str(Path(data_dir) / spec.name) if data_dir and (Path(data_dir) / spec.name).is_dir() else None
    piqa_split = cfg.get("protocol", {}).get("piqa_split", "validation")
    ex = load_examples(spec, tokenizer, int(t.get("max_len") or spec.max_len), data_path, piqa_split)
    train, evals = ex["train"], ex["eval"]
    if t.get("max_train_examples"):
        train = train[: int(t["max_train_examples"])]
    if t.get("max_dev_examples"):
        evals = evals[: int(t["max_dev_examples"])]
    pad = pad_id(tokenizer)
    eval_data = pad_examples(evals, pad)
    info = {"task": spec.name, "data_path": data_path, "n_train": len(train), "n_eval": len(evals),
            "pad_id": pad, "eval_split": "test" if spec.name == "piqa" and piqa_split == "test"
            else spec.dev_splits[0]}

    if spec.kind == "lm_cls":
        from kdqat.data.lm_cls import score_choices
        from kdqat.evaluation import compute_metrics
        labels = [e["label"] for e in evals]
        key = spec.selection_key

        def evaluate(model):
            m = example_perplexity(model, eval_data, bs)
            scores = score_choices(model, evals, pad, batch_size=2 * bs)
            m.update(compute_metrics(dataclasses.replace(spec, metric="acc"), scores, labels))
            if key != "acc":
                m.update(compute_metrics(spec, scores, labels))
            return {**m, "selection": m[key], "report": m[spec.report_key]}
        return TaskData(pad_examples(train, pad), evaluate, higher_is_better=True, info=info)

    def evaluate(model):
        m = example_perplexity(model, eval_data, bs)
        return {**m, "selection": m["ppl"], "report": m["ppl"]}

    include = None
    if sources.get("lm_eval_tasks"):
        from kdqat.lm_eval_bridge import render_task_dir
        include = render_task_dir(sources["lm_eval_tasks"], Path(workdir) / "lm_eval_tasks")
    info["lm_eval_tasks"] = str(include) if include else "lm-eval built-in"

    def final(model):
        metrics, raw = lm_eval_scores(model, tokenizer, spec.name, family, include, batch_size=bs)
        return {**metrics, "report": metrics["acc"]}, raw
    return TaskData(pad_examples(train, pad), evaluate, higher_is_better=False, final=final, info=info)
