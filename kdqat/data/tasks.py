"""Task registry: one immutable :class:`TaskSpec` per task name (SPEC §1.1, §1.2, §6.4, §7, §12).

A spec holds only data: where the examples come from, which columns hold text and label, the
sequence length / batch size / evaluation interval of each protocol, the metric set, and which
metric key best-dev selection uses (``selection_key``) vs which one the table shows
(``report_key``). Loading lives elsewhere: encoder tasks in :mod:`kdqat.data.encoder`; the other
kinds name their loader as ``"module:function"`` in ``loader``.

Kinds:
  * ``classification`` / ``regression``: BERT-style encoder tasks (GLUE, KLUE, NSMC, rt_polarity);
  * ``lm``: causal-LM text (perplexity, SPEC §7.4);
  * ``instruction``: Alpaca-prompt fine-tuning + zero-shot lm-eval accuracy (SPEC §7.5);
  * ``lm_cls``: GLUE-style NLU done by LM fine-tuning with OPT (SPEC §7.6). They cannot share a
    GLUE name (one name, one spec), so they are registered as ``lm_<glue name>`` and keep the
    GLUE source, fields and labels.

Metric sets (``metric``) and the keys :func:`kdqat.evaluation.compute_metrics` returns (all x100):
  ``acc`` -> acc; ``acc_f1`` -> acc, f1, acc_f1; ``mcc`` -> mcc; ``corr`` -> pearson, spearman,
  corr; ``acc_macro_f1`` -> acc, f1_macro; ``ppl`` (lm) and ``lm_eval`` (instruction) are computed
  by the decoder evaluation, not here. For tasks with several dev splits the keys of the 2nd..n-th
  split carry the prefix in ``dev_prefixes`` (MNLI: ``mm_acc``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

KINDS = ("classification", "regression", "lm", "lm_cls", "instruction")
METRICS = ("acc", "acc_f1", "mcc", "corr", "acc_macro_f1", "ppl", "lm_eval")
PROTOCOLS = ("p1", "p2", "ternarybert")
ENCODER_LOADER = "kdqat.data.encoder:load_encoder_task"


@dataclass(frozen=True)
class TaskSpec:
    """Everything the pipeline needs to know about one task (no behaviour).

    ``source``: hub dataset id (``config`` = its configuration) or ``"offline:<name>"``.
    ``text_a`` / ``text_b``: column names (``text_b`` None for single sentences).
    ``label_field``: column name; a dotted path reads a nested field (KLUE-STS ``labels.label``).
    ``eval_interval``: steps between dev evaluations per protocol (SPEC §1.2), no DA;
    ``eval_interval_da``: the same with data augmentation, where the code defines one.
    ``dev_splits[0]`` is the selection split; ``dev_prefixes`` has one prefix per dev split.
    ``train_size``: examples in the train split (None: unknown without loading it); the registry's
    dry run prints step counts from it (SPEC §6.1: t_total = ceil(train_size / bs) · epochs).
    ``dev_size``: examples in all dev splits together (None: unknown); ``runners.estimate`` prices
    dev evaluations with it.
    ``loader``: ``"module:function"`` giving model-ready splits (encoder tasks:
    :func:`kdqat.data.encoder.load_encoder_task`). ``raw_loader``: for offline encoder tasks, a
    ``"module:function"`` called with no argument returning ``{split: rows}`` of raw text.
    """

    name: str
    kind: str
    source: str
    config: str | None = None
    text_a: str | None = None
    text_b: str | None = None
    label_field: str | None = "label"
    num_labels: int = 0
    train_split: str = "train"
    dev_splits: tuple[str, ...] = ("validation",)
    dev_prefixes: tuple[str, ...] = ("",)
    max_len: int = 128
    batch_size: int = 32
    eval_interval: Mapping[str, int] = field(default_factory=dict, hash=False, compare=False)
    eval_interval_da: Mapping[str, int] = field(default_factory=dict, hash=False, compare=False)
    train_size: int | None = None
    dev_size: int | None = None
    metric: str = "acc"
    selection_key: str = "acc"
    report_key: str = "acc"
    loader: str = ENCODER_LOADER
    raw_loader: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind {self.kind!r} not in {KINDS}")
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name}: metric {self.metric!r} not in {METRICS}")
        if len(self.dev_prefixes) != len(self.dev_splits):
            raise ValueError(f"task {self.name}: one dev prefix per dev split")
        if self.is_offline and self.loader == ENCODER_LOADER and not self.raw_loader:
            raise ValueError(f"task {self.name}: an offline encoder task needs a raw_loader")
        for attr in ("eval_interval", "eval_interval_da"):
            object.__setattr__(self, attr, MappingProxyType(dict(getattr(self, attr))))

    @property
    def is_offline(self) -> bool:
        return self.source.startswith("offline:")

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None

    @property
    def higher_is_better(self) -> bool:
        """Direction of best-dev selection: False only for perplexity."""
        return self.selection_key != "ppl"

    def eval_every(self, protocol: str = "p1", augmented: bool = False) -> int:
        """Dev-evaluation interval in steps for ``protocol`` (SPEC §1.2)."""
        table = self.eval_interval_da if augmented and protocol in self.eval_interval_da else self.eval_interval
        if protocol not in table:
            raise ValueError(f"task {self.name}: no eval interval for protocol {protocol!r}; have {sorted(table)}")
        return table[protocol]


def _iv(p1: int, p2: int, tb: int) -> dict[str, int]:
    return {"p1": p1, "p2": p2, "ternarybert": tb}


_GLUE = "nyu-mll/glue"
_ACC_F1 = dict(metric="acc_f1", selection_key="acc", report_key="acc_f1")
_CORR = dict(metric="corr", selection_key="corr", report_key="corr", num_labels=1, kind="regression")

# SPEC §1.1 (fields follow the hub's nyu-mll/glue columns), §1.2 (len/batch/intervals), §6.4 (keys);
# train_size = rows of the hub's GLUE train split.
_GLUE_SPECS = [
    TaskSpec("cola", "classification", _GLUE, "cola", "sentence", None, num_labels=2, max_len=64,
             batch_size=16, eval_interval=_iv(50, 50, 50), eval_interval_da={"p1": 400, "p2": 2000},
             train_size=8551, dev_size=1043, metric="mcc", selection_key="mcc", report_key="mcc"),
    TaskSpec("sst2", "classification", _GLUE, "sst2", "sentence", None, num_labels=2, max_len=64,
             eval_interval=_iv(100, 100, 200), train_size=67349, dev_size=872),
    TaskSpec("mrpc", "classification", _GLUE, "mrpc", "sentence1", "sentence2", num_labels=2,
             eval_interval=_iv(50, 50, 200), eval_interval_da={"p2": 1000}, train_size=3668,
             dev_size=408, **_ACC_F1),
    TaskSpec("stsb", source=_GLUE, config="stsb", text_a="sentence1", text_b="sentence2",
             eval_interval=_iv(100, 100, 50), eval_interval_da={"p2": 2000}, train_size=5749,
             dev_size=1500, **_CORR),
    TaskSpec("qqp", "classification", _GLUE, "qqp", "question1", "question2", num_labels=2,
             eval_interval=_iv(1000, 1000, 1000), train_size=363846, dev_size=40430, **_ACC_F1),
    TaskSpec("mnli", "classification", _GLUE, "mnli", "premise", "hypothesis", num_labels=3,
             dev_splits=("validation_matched", "validation_mismatched"), dev_prefixes=("", "mm_"),
             eval_interval=_iv(8000, 8000, 1000), train_size=392702, dev_size=9815 + 9832,
             note="selection and report on matched acc; mismatched recorded as mm_acc (SPEC §6.4, §12.4)"),
    TaskSpec("qnli", "classification", _GLUE, "qnli", "question", "sentence", num_labels=2,
             eval_interval=_iv(1000, 1000, 1000), train_size=104743, dev_size=5463),
    TaskSpec("rte", "classification", _GLUE, "rte", "sentence1", "sentence2", num_labels=2,
             eval_interval=_iv(20, 20, 100), eval_interval_da={"p1": 100, "p2": 1000}, train_size=2490, dev_size=277),
]

_KOREAN_NOTE = ("assumed: ULM-large/KLUE/NSMC processors are not public (SPEC §6.5); max_len 128, "
                "batch 32 and the eval interval are assumptions scaled like GLUE tasks of similar size")
_KOREAN_SPECS = [
    TaskSpec("klue_tc", "classification", "klue", "ynat", "title", None, num_labels=7,
             eval_interval=_iv(1000, 1000, 1000), train_size=45678, metric="acc_macro_f1",
             note="assumed: accuracy as in the P1 table; macro-F1 is KLUE's official metric "
                  "(recorded as f1_macro). " + _KOREAN_NOTE),
    TaskSpec("klue_sts", source="klue", config="sts", text_a="sentence1", text_b="sentence2",
             label_field="labels.label", eval_interval=_iv(100, 100, 100), train_size=11668,
             note="assumed: (Pearson+Spearman)/2 on the 0-5 score as for STS-B; KLUE's official "
                  "metrics are Pearson and binary F1. " + _KOREAN_NOTE, **_CORR),
    TaskSpec("nsmc", "classification", "e9t/nsmc", None, "document", None, num_labels=2,
             dev_splits=("test",), eval_interval=_iv(1000, 1000, 1000), train_size=150000,
             note="NSMC has no validation split: its 50k test split is the dev set. " + _KOREAN_NOTE),
]

_OFFLINE_SPECS = [
    # train_size: the train split of kdqat.data.offline.load_rt_polarity (seed 0, 80/10/10 hashed split)
    TaskSpec("rt_polarity", "classification", "offline:rt_polarity", None, "text", None, num_labels=2,
             dev_splits=("dev",), max_len=64, batch_size=32, eval_interval=_iv(50, 50, 50), train_size=10201,
             raw_loader="kdqat.data.offline:load_rt_polarity",
             note="offline stand-in for SST-2: Rotten Tomatoes fresh/rotten, hashed split with seed 0 "
                  "(ASSETS.md); tokenised by the SPEC §1.1 rule like SST-2; its test split is unused"),
    TaskSpec("lm_text", "lm", "offline:lm_text", None, "text", None, label_field=None, max_len=512,
             batch_size=4, metric="ppl", selection_key="ppl", report_key="ppl",
             loader="kdqat.data.offline:load_lm_text", note="offline raw English text for LM (ASSETS.md)"),
]

_PPL = dict(metric="ppl", selection_key="ppl", report_key="ppl", label_field=None, max_len=512, batch_size=4)
_INST = dict(kind="instruction", metric="lm_eval", selection_key="ppl", report_key="acc", label_field=None,
             max_len=512, batch_size=4, loader="kdqat.data.instruct:load_instruction_task")
_DECODER_SPECS = [
    TaskSpec("ptb", "lm", "ptb_text_only", None, "sentence", None, loader="kdqat.data.ptb:load_ptb",
             note="512-token blocks per 1000-line map batch, validation split (SPEC §7.2, §7.4)", **_PPL),
    TaskSpec("piqa", source="ybisk/piqa", dev_splits=("validation",),
             note="scored on validation: test labels are -1 (SPEC §12.9)", **_INST),
    TaskSpec("openbookqa", source="allenai/openbookqa", config="main", dev_splits=("test",), **_INST),
    TaskSpec("arc_easy", source="allenai/ai2_arc", config="ARC-Easy", dev_splits=("test",), **_INST),
    TaskSpec("arc_challenge", source="allenai/ai2_arc", config="ARC-Challenge", dev_splits=("test",), **_INST),
    TaskSpec("gsm8k", source="openai/gsm8k", config="main", dev_splits=("test",),
             note="generation + exact match (SPEC §7.5)", **_INST),
]


def _lm_cls(glue: TaskSpec) -> TaskSpec:
    """OPT NLU variant of a GLUE task (SPEC §7.6, §12.11): same data, LM fine-tuning, ACC + PPL."""
    key = "mcc" if glue.name == "cola" else "acc"
    return dataclasses.replace(
        glue, name=f"lm_{glue.name}", kind="lm_cls", max_len=512, batch_size=4,
        eval_interval={}, eval_interval_da={}, metric=key, selection_key=key, report_key=key,
        loader="kdqat.data.lm_cls:load_lm_cls_task",
        note="LM-style fine-tuning with OPT (no code released; SPEC §7.6); CoLA reported as MCC (§12.11)")


_LM_CLS_SPECS = [_lm_cls(t) for t in _GLUE_SPECS if t.name in ("cola", "mrpc", "sst2", "rte")]

# Synthetic tasks for tiny models (tests, smoke tables; kdqat.data.toy): token ids, no tokenizer.
_TOY_SPECS = [
    TaskSpec("toy_cls", "classification", "offline:toy_cls", None, None, None, num_labels=2, max_len=32,
             batch_size=16, dev_splits=("dev",), eval_interval=_iv(8, 8, 8), train_size=512, dev_size=128,
             loader="kdqat.data.toy:load_toy_cls",
             note="synthetic: label = more low-third than high-third token ids"),
    TaskSpec("toy_lm", "lm", "offline:toy_lm", None, None, None, label_field=None, max_len=64, batch_size=4,
             train_size=64,
             metric="ppl", selection_key="ppl", report_key="ppl", loader="kdqat.data.toy:load_toy_lm",
             note="synthetic: sparse random Markov chain"),
]

TASKS: dict[str, TaskSpec] = {
    t.name: t for t in _GLUE_SPECS + _KOREAN_SPECS + _OFFLINE_SPECS + _DECODER_SPECS + _LM_CLS_SPECS + _TOY_SPECS
}
GLUE_TASKS = tuple(t.name for t in _GLUE_SPECS)


def get_task(name: str) -> TaskSpec:
    """The registered spec called ``name``; ValueError listing the valid names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}") from None
