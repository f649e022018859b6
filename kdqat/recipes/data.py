"""Task data as dicts of tensors for the training loop, whatever the task's source.

Encoder splits: {"input_ids", "attention_mask", "token_type_ids", "labels", "lengths"} [N, S] / [N],
padded to the task's max_len as the official pipeline does (SPEC §1.1: MSE losses include padding,
so the padded length is part of the protocol). LM splits: LongTensor [n_blocks, block].
"""
from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import torch

from kdqat.data.tasks import ENCODER_LOADER, TaskSpec

ENCODER_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels", "lengths")


def _call(loader: str, *args, **kw):
    mod, fn = loader.split(":")
    return getattr(importlib.import_module(mod), fn)(*args, **kw)


def _to_tensors(ds) -> dict:
    if isinstance(ds, dict):
        return {k: torch.as_tensor(ds[k]) for k in ENCODER_COLUMNS if k in ds}
    cols = [c for c in ENCODER_COLUMNS if c in ds.column_names]
    return {c: torch.as_tensor(np.stack(ds.with_format("numpy")[c])) for c in cols}


def _cap(d: dict, n: int | None) -> dict:
    return d if not n else {k: v[:n] for k, v in d.items()}


def encoder_data(task: TaskSpec, tokenizer, train_cfg: dict, seed: int, device="cpu") -> dict:
    """{"train": tensors, "dev": [tensors per dev split]}; ``train_cfg`` may cap sizes with
    ``max_train_examples`` / ``max_dev_examples`` (demo and smoke tables): the first rows of each
    split are kept; with both caps set only the first ``max(caps)`` rows are tokenized at all."""
    if train_cfg.get("max_len") and train_cfg["max_len"] != task.max_len:
        task = dataclasses.replace(task, max_len=int(train_cfg["max_len"]))
    kw = {}
    caps = (train_cfg.get("max_train_examples"), train_cfg.get("max_dev_examples"))
    if task.loader == ENCODER_LOADER and all(caps):
        kw["max_examples"] = int(max(caps))   # tokenize only the rows the caps keep (first rows)
    splits = _call(task.loader, task, tokenizer, **kw)
    train = _cap(_to_tensors(splits[task.train_split]), train_cfg.get("max_train_examples"))
    devs = [_cap(_to_tensors(splits[s]), train_cfg.get("max_dev_examples")) for s in task.dev_splits]
    if "token_type_ids" not in train:
        for d in [train, *devs]:
            d["token_type_ids"] = torch.zeros_like(d["input_ids"])
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return {"train": move(train), "dev": [move(d) for d in devs]}


def model_inputs(batch: dict) -> dict:
    """The keyword arguments of an HF encoder forward."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
