"""Loading and BERT-style tokenisation of encoder tasks: GLUE, KLUE, NSMC (SPEC §1.1).

Per example (``L`` = ``task.max_len``)::

    single: [CLS] a[:L-2] [SEP]
    pair:   [CLS] a' [SEP] b' [SEP]    (a', b') = truncate_pair(a, b, L-3)
    token_type_ids: 0 for [CLS] a [SEP], 1 for b [SEP];  attention_mask: 1 on real tokens
    padding: id 0 (input_ids, attention_mask, token_type_ids) up to L
    lengths: real token count incl. [CLS]/[SEP] (the attention-map loss mask)

The pair rule is implemented here, not delegated to ``truncation="longest_first"``, whose fast
(Rust) implementation splits the cut differently from the official pop-the-longer loop.
Output columns (each split): input_ids / attention_mask / token_type_ids [L] int64,
labels int64 (classification) or float32 (regression), lengths int64; torch format.
"""
from __future__ import annotations

import importlib
import os
from typing import Mapping

from kdqat.data import DataUnavailable
from kdqat.data.tasks import TaskSpec
from kdqat import hub



def truncate_pair(a: list, b: list, max_tokens: int) -> tuple[list, list]:
    """Pop from the end of the longer list (``b`` on ties) until len(a)+len(b) <= max_tokens.

    The official ``_truncate_seq_pair`` (SPEC §1.1); returns shortened copies.
    """
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def build_features(ids_a: list[int], ids_b: list[int] | None, max_len: int, cls_id: int, sep_id: int,
                   pad_id: int = 0) -> dict[str, list[int] | int]:
    """Token ids of one example (no special tokens) -> padded model inputs (module docstring)."""
    if ids_b is None:
        ids_a = list(ids_a[: max_len - 2])
        ids = [cls_id] + ids_a + [sep_id]
        types = [0] * len(ids)
    else:
        ids_a, ids_b = truncate_pair(ids_a, ids_b, max_len - 3)
        ids = [cls_id] + ids_a + [sep_id] + ids_b + [sep_id]
        types = [0] * (len(ids_a) + 2) + [1] * (len(ids_b) + 1)
    n = len(ids)
    pad = max_len - n
    return {"input_ids": ids + [pad_id] * pad, "attention_mask": [1] * n + [0] * pad,
            "token_type_ids": types + [0] * pad, "lengths": n}


def _field(batch: Mapping[str, list], path: str) -> list:
    """Column ``path`` of a batch; ``a.b`` reads key ``b`` of the dicts in column ``a``."""
    head, _, rest = path.partition(".")
    values = batch[head]
    for key in rest.split(".") if rest else []:
        values = [v[key] for v in values]
    return values


def encode_split(task: TaskSpec, raw, tokenizer, max_examples: int | None = None):
    """Tokenise one raw split (a ``datasets.Dataset`` with the spec's columns) -> model inputs.

    The first ``max_examples`` rows are kept (deterministic subset). ``tokenizer`` is an HF
    tokenizer; its lower-casing/WordPiece is used as is (uncased BERT in the papers).
    """
    import datasets

    if max_examples is not None:
        raw = raw.select(range(min(max_examples, len(raw))))
    regression = task.kind == "regression"
    seq = datasets.Sequence(datasets.Value("int64"), length=task.max_len)
    features = datasets.Features({
        "input_ids": seq, "attention_mask": seq, "token_type_ids": seq,
        "labels": datasets.Value("float32" if regression else "int64"), "lengths": datasets.Value("int64"),
    })

    def _tok(texts: list) -> list[list[int]]:
        texts = ["" if t is None else str(t) for t in texts]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _batch(batch):
        ids_a = _tok(_field(batch, task.text_a))
        ids_b = _tok(_field(batch, task.text_b)) if task.is_pair else [None] * len(ids_a)
        rows = [build_features(a, b, task.max_len, tokenizer.cls_token_id, tokenizer.sep_token_id)
                for a, b in zip(ids_a, ids_b)]
        out = {k: [r[k] for r in rows] for k in ("input_ids", "attention_mask", "token_type_ids", "lengths")}
        out["labels"] = _field(batch, task.label_field)
        return out

    enc = raw.map(_batch, batched=True, remove_columns=raw.column_names, features=features,
                  desc=f"tokenize {task.name}")
    return enc.with_format("torch")


def _unavailable(task: TaskSpec, why: str) -> DataUnavailable:
    cfg = f", {task.config!r}" if task.config else ""
    return DataUnavailable(
        f"task {task.name}: dataset {task.source!r}{cfg} is not available here ({why}). On a machine "
        f"with Hugging Face hub access either pre-download it into the cache: HF_HOME=<dir> python -c "
        f"\"import datasets; datasets.load_dataset({task.source!r}{cfg})\" then copy <dir> here and run "
        f"with HF_HOME=<dir> HF_DATASETS_OFFLINE=1; or save it: datasets.load_dataset(...).save_to_disk"
        f"(<path>) and pass data_path=<path>.")


def load_raw_splits(task: TaskSpec, *, cache_dir: str | None = None, data_path: str | None = None) -> dict:
    """Raw ``{split: datasets.Dataset}`` for the train and dev splits of ``task``.

    Sources, in order: ``data_path`` (a ``DatasetDict.save_to_disk`` folder); an offline task's
    ``raw_loader`` (called with no argument, returning ``{split: list of row dicts}``); the hub
    via ``datasets.load_dataset``. Hub failures raise :class:`DataUnavailable` within seconds:
    in offline mode ``datasets`` fails at once; otherwise the endpoint is probed first (its own
    retries take ~25 s).
    """
    import datasets

    splits = (task.train_split, *task.dev_splits)
    if data_path is not None:
        if not os.path.isdir(data_path):
            raise _unavailable(task, f"data_path {data_path!r} is not a folder")
        dd = datasets.load_from_disk(data_path)
        missing = [s for s in splits if s not in dd]
        if missing:
            raise DataUnavailable(f"task {task.name}: {data_path} lacks split(s) {missing}; has {list(dd)}")
        return {s: dd[s] for s in splits}
    if task.is_offline:
        module, _, fn = (task.raw_loader or "").partition(":")
        raw = getattr(importlib.import_module(module), fn)()
        return {s: raw[s] if isinstance(raw[s], datasets.Dataset) else datasets.Dataset.from_list(list(raw[s]))
                for s in splits}
    if not datasets.config.HF_HUB_OFFLINE and not hub.hub_reachable():
        raise _unavailable(task, "the Hugging Face hub is unreachable")
    try:
        return {s: datasets.load_dataset(task.source, task.config, split=s, cache_dir=cache_dir) for s in splits}
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
        raise _unavailable(task, f"{type(err).__name__}: {err}") from err


def load_encoder_task(task: TaskSpec, tokenizer, *, cache_dir: str | None = None, max_examples: int | None = None,
                      data_path: str | None = None) -> dict:
    """``{split: tokenised datasets.Dataset}`` for the train and dev splits (module docstring)."""
    if task.kind not in ("classification", "regression"):
        raise ValueError(f"task {task.name} is of kind {task.kind!r}, not an encoder task")
    raw = load_raw_splits(task, cache_dir=cache_dir, data_path=data_path)
    return {s: encode_split(task, ds, tokenizer, max_examples) for s, ds in raw.items()}
