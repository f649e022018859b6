"""Instruction fine-tuning data for the TSLD reasoning tasks (SPEC §7.5, §9 items 27-28, §12.9).

Every record becomes an Alpaca "no-input" prompt followed directly (no space) by the answer and
the tokenizer's EOS text::

    Below is an instruction that describes a task. Write a response that appropriately completes
    the request.\\n\\n### Instruction:\\n{instruction}\\n\\n### Response:{answer}{eos}

``instruction`` per task (as the official ``format_inst_dataset``): PIQA ``goal + " "``;
OpenbookQA ``question_stem + " "``; ARC ``question + " "``; GSM8K ``question`` (no trailing
space). ``answer``: PIQA ``sol1``/``sol2`` by ``label``; OBQA/ARC the choice text whose label is
``answerKey``; GSM8K the full ``answer`` field (rationale + "#### n").

Encoding (:func:`encode`): ``input_ids = tok(prompt + answer + eos)`` with the tokenizer's default
special tokens (OPT/LLaMA add BOS), optionally truncated to ``max_len``; ``labels`` = a copy with
the first ``len(tok(prompt)) − 1`` positions set to −100, i.e. every prompt token is masked
*except the last one* (the official "fixed (-1)"). The HF model shifts the labels internally.

Splits: fine-tuning on ``train``; evaluation on the task's first dev split from
:mod:`kdqat.data.tasks` (PIQA ``validation``, because its ``test`` labels are −1 — the official
test-split quirk that trains towards ``sol2`` is not reproduced; OBQA/ARC/GSM8K ``test``).
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
INSTRUCTION_TASKS = ("piqa", "openbookqa", "arc_easy", "arc_challenge", "gsm8k")


def _choice_text(record: dict) -> str:
    choices = record["choices"]
    labels = list(choices["label"])
    if record["answerKey"] not in labels:
        raise ValueError(f"answerKey {record['answerKey']!r} not among choice labels {labels}")
    return choices["text"][labels.index(record["answerKey"])]


def format_record(task: str, record: dict) -> tuple[str, str]:
    """``(instruction, answer)`` of one raw hub record of ``task`` (module docstring)."""
    if task == "piqa":
        if record["label"] not in (0, 1):
            raise ValueError(f"piqa record has label {record['label']!r}; use the validation split (SPEC §12.9)")
        return record["goal"] + " ", record["sol1"] if record["label"] == 0 else record["sol2"]
    if task == "openbookqa":
        return record["question_stem"] + " ", _choice_text(record)
    if task in ("arc_easy", "arc_challenge"):
        return record["question"] + " ", _choice_text(record)
    if task == "gsm8k":
        return record["question"], record["answer"]
    raise ValueError(f"unknown instruction task {task!r}; valid: {', '.join(INSTRUCTION_TASKS)}")


def build_prompt(instruction: str) -> str:
    """The Alpaca no-input prompt around ``instruction`` (ends with ``"### Response:"``)."""
    return ALPACA_NO_INPUT.format(instruction=instruction)


def encode(tokenizer, prompt: str, answer: str, max_len: int | None = None) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` (lists of equal length) for one prompt/answer pair (module docstring)."""
    ids = tokenizer(prompt + answer + tokenizer.eos_token)["input_ids"]
    n_prompt = len(tokenizer(prompt)["input_ids"])
    if max_len is not None:
        ids = ids[:max_len]
    labels = list(ids)
    for i in range(min(max(n_prompt - 1, 0), len(labels))):
        labels[i] = IGNORE_INDEX
    return {"input_ids": list(ids), "labels": labels}


def examples_from_records(task: str, records, tokenizer, max_len: int | None = None) -> list[dict]:
    """Encoded examples from raw records (a ``datasets.Dataset`` or a list of dicts, e.g. local JSON)."""
    out = []
    for rec in records:
        instruction, answer = format_record(task, rec)
        out.append(encode(tokenizer, build_prompt(instruction), answer, max_len))
    return out


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids`` with ``pad_id``, ``labels`` with −100; ``[B, S_max]`` each.

    ``attention_mask`` is 1 on the real tokens (from the lengths). The official collator uses
    ``input_ids != pad_id``, which differs only on a final EOS when pad = EOS (LLaMA); that
    position predicts no target and, with right padding, no earlier token attends to it.
    """
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def load_instruction_task(task: str, tokenizer, max_len: int | None = 512, *, cache_dir: str | None = None,
                          data_path: str | None = None) -> dict[str, list[dict]]:
    """``{"train": [...], "eval": [...]}`` encoded examples of ``task`` from the hub.

    Source, config and splits come from :mod:`kdqat.data.tasks`; hub access goes through
    :func:`kdqat.data.encoder.load_raw_splits`, which raises ``DataUnavailable`` (naming the
    dataset and how to pre-cache it) within seconds when the hub is unreachable.
    """
    from kdqat.data.encoder import load_raw_splits
    from kdqat.data.tasks import get_task

    if task not in INSTRUCTION_TASKS:
        raise ValueError(f"unknown instruction task {task!r}; valid: {', '.join(INSTRUCTION_TASKS)}")
    spec = get_task(task)
    raw = load_raw_splits(spec, cache_dir=cache_dir, data_path=data_path)
    return {"train": examples_from_records(task, raw[spec.train_split], tokenizer, max_len),
            "eval": examples_from_records(task, raw[spec.dev_splits[0]], tokenizer, max_len)}
