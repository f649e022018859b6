"""Task registry (SPEC §1.2, §6.4) and encoder tokenisation / loading (SPEC §1.1)."""
from __future__ import annotations

import socket
import time

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from kdqat.data import DataUnavailable
from kdqat import hub
from kdqat.data import encoder
from kdqat.data.encoder import build_features, encode_split, load_encoder_task, truncate_pair
from kdqat.data.tasks import GLUE_TASKS, KINDS, TASKS, get_task

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "a", "dog", "##s", "ran"]
ID = {w: i for i, w in enumerate(WORDS)}


@pytest.fixture(scope="module")
def tok():
    t = Tokenizer(models.WordPiece(ID, unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", pad_token="[PAD]")


# ---------------------------------------------------------------- registry

# SPEC §1.2: max_len, batch, eval interval P1 / P2 / TernaryBERT
TABLE_1_2 = {"cola": (64, 16, 50, 50, 50), "sst2": (64, 32, 100, 100, 200), "mrpc": (128, 32, 50, 50, 200),
             "stsb": (128, 32, 100, 100, 50), "qqp": (128, 32, 1000, 1000, 1000),
             "mnli": (128, 32, 8000, 8000, 1000), "qnli": (128, 32, 1000, 1000, 1000),
             "rte": (128, 32, 20, 20, 100)}
# SPEC §6.4: (selection key, report key)
TABLE_6_4 = {"cola": ("mcc", "mcc"), "sst2": ("acc", "acc"), "qnli": ("acc", "acc"), "rte": ("acc", "acc"),
             "mrpc": ("acc", "acc_f1"), "qqp": ("acc", "acc_f1"), "stsb": ("corr", "corr"), "mnli": ("acc", "acc")}


def test_glue_defaults_match_spec_tables():
    assert set(GLUE_TASKS) == set(TABLE_1_2)
    for name, (max_len, bs, p1, p2, tb) in TABLE_1_2.items():
        t = get_task(name)
        got = (t.max_len, t.batch_size, t.eval_every("p1"), t.eval_every("p2"), t.eval_every("ternarybert"))
        assert got == (max_len, bs, p1, p2, tb), name
        assert (t.selection_key, t.report_key) == TABLE_6_4[name], name
        assert t.source == "nyu-mll/glue" and t.config == name
    assert get_task("cola").eval_every("p1", augmented=True) == 400
    assert get_task("rte").eval_every("p2", augmented=True) == 1000
    assert get_task("sst2").eval_every("p1", augmented=True) == 100  # no DA interval -> plain one
    assert get_task("stsb").kind == "regression" and get_task("stsb").num_labels == 1
    mnli = get_task("mnli")
    assert mnli.dev_splits == ("validation_matched", "validation_mismatched") and mnli.num_labels == 3


def test_other_tasks_and_lookup():
    assert get_task("klue_tc").num_labels == 7 and "assumed" in get_task("klue_tc").note
    assert "macro-F1" in get_task("klue_tc").note
    assert (get_task("klue_sts").kind, get_task("klue_sts").report_key) == ("regression", "corr")
    assert get_task("nsmc").source == "e9t/nsmc"
    rt = get_task("rt_polarity")
    assert (rt.source, rt.num_labels, rt.max_len, rt.batch_size, rt.eval_every()) == (
        "offline:rt_polarity", 2, 64, 32, 50) and rt.is_offline
    assert get_task("lm_text").kind == "lm" and get_task("ptb").source == "ptb_text_only"
    assert not get_task("ptb").higher_is_better and get_task("cola").higher_is_better
    for name in ("piqa", "openbookqa", "arc_easy", "arc_challenge", "gsm8k"):
        assert get_task(name).kind == "instruction"
    assert get_task("lm_cola").kind == "lm_cls" and get_task("lm_cola").report_key == "mcc"
    assert get_task("lm_rte").source == get_task("rte").source and get_task("lm_rte").text_b == "sentence2"
    for t in TASKS.values():
        assert t.kind in KINDS and ":" in t.loader
    with pytest.raises(ValueError, match="valid tasks: .*cola.*rt_polarity"):
        get_task("glue-cola")
    with pytest.raises(ValueError, match="no eval interval"):
        get_task("ptb").eval_every("p1")


# ---------------------------------------------------------------- tokenisation rule

def test_truncate_pair_pops_longer_side_b_on_ties():
    assert truncate_pair([1, 2, 3, 4, 5], [6, 7], 4) == ([1, 2], [6, 7])
    # 3+3 -> tie pops b -> (3,2) -> a longer -> (2,2) -> tie pops b -> (2,1)
    assert truncate_pair([1, 2, 3], [4, 5, 6], 3) == ([1, 2], [4])
    assert truncate_pair([1], [2], 5) == ([1], [2])


def test_build_features_single_and_pair():
    f = build_features([10, 11, 12, 13], None, 5, cls_id=2, sep_id=3)  # cut to L-2 = 3
    assert f == {"input_ids": [2, 10, 11, 12, 3], "attention_mask": [1] * 5, "token_type_ids": [0] * 5,
                 "lengths": 5}
    f = build_features([10, 11], [20], 8, cls_id=2, sep_id=3)
    assert f == {"input_ids": [2, 10, 11, 3, 20, 3, 0, 0], "attention_mask": [1, 1, 1, 1, 1, 1, 0, 0],
                 "token_type_ids": [0, 0, 0, 0, 1, 1, 0, 0], "lengths": 6}


def test_hf_longest_first_differs_from_spec_rule(tok):
    """Why the rule is hand-written: a 2+2 pair cut to 6 (3 tokens) keeps a=2 officially, HF keeps b=2."""
    hf = tok("the cat", "on mat", truncation="longest_first", max_length=6)["input_ids"]
    assert hf == [2, 4, 3, 7, 8, 3]
    f = build_features([4, 5], [7, 8], 6, 2, 3)
    assert f["input_ids"] == [2, 4, 5, 3, 7, 3]


def test_encode_split_exact_ids(tok):
    task = get_task("mrpc")
    raw = datasets.Dataset.from_dict({
        "sentence1": ["The cats sat on a mat!", "dog"], "sentence2": ["A dog ran", None], "label": [1, 0],
        "idx": [0, 1]})
    enc = encode_split(task, raw, tok)
    assert enc.column_names == ["input_ids", "attention_mask", "token_type_ids", "labels", "lengths"]
    row = enc[0]
    # the cat ##s sat on a mat [UNK](!) -> 8 ids; a dog ran -> 3 ids; 13 tokens + 3 special = 14
    expect = [2, 4, 5, 11, 6, 7, 9, 8, 1, 3, 9, 10, 12, 3] + [0] * 114
    assert row["input_ids"].tolist() == expect and row["input_ids"].dtype == torch.int64
    assert row["token_type_ids"].tolist() == [0] * 10 + [1] * 4 + [0] * 114
    assert row["attention_mask"].tolist() == [1] * 14 + [0] * 114
    assert int(row["lengths"]) == 14 and int(row["labels"]) == 1 and row["labels"].dtype == torch.int64
    # a None text becomes "" -> empty b: [CLS] dog [SEP] [SEP]
    assert enc[1]["input_ids"][:5].tolist() == [2, 10, 3, 3, 0] and int(enc[1]["lengths"]) == 4


def test_encode_split_regression_nested_label_and_max_examples(tok):
    task = get_task("klue_sts")
    raw = datasets.Dataset.from_dict({
        "sentence1": ["the cat", "a dog", "the mat"], "sentence2": ["a cat", "the dog", "on"],
        "labels": [{"label": 3.5, "binary-label": 1}, {"label": 0.25, "binary-label": 0},
                   {"label": 5.0, "binary-label": 1}]})
    enc = encode_split(task, raw, tok, max_examples=2)
    rows = enc[:]
    assert len(enc) == 2 and rows["labels"].dtype == torch.float32
    assert rows["labels"].tolist() == [3.5, 0.25]
    assert rows["input_ids"][1, :7].tolist() == [2, 9, 10, 3, 4, 10, 3]


def test_load_encoder_task_from_saved_dataset_dict(tok, tmp_path):
    task = get_task("cola")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["the cat sat", "dog dog dog"], "label": [1, 0]}),
        "validation": datasets.Dataset.from_dict({"sentence": ["on the mat " * 40], "label": [1]})})
    dd.save_to_disk(str(tmp_path / "cola"))
    out = load_encoder_task(task, tok, data_path=str(tmp_path / "cola"), max_examples=1)
    assert sorted(out) == ["train", "validation"] and len(out["train"]) == 1
    assert out["train"][0]["input_ids"][:5].tolist() == [2, 4, 5, 6, 3]
    val = out["validation"][0]  # on the mat x40 = 120 tokens cut to max_len-2 = 62; a[61] = "the"
    assert int(val["lengths"]) == 64 and val["input_ids"][61:].tolist() == [7, 4, 3] and val["input_ids"].shape == (64,)
    with pytest.raises(DataUnavailable, match="lacks split"):
        load_encoder_task(get_task("mnli"), tok, data_path=str(tmp_path / "cola"))
    with pytest.raises(ValueError, match="not an encoder task"):
        load_encoder_task(get_task("ptb"), tok)


# ---------------------------------------------------------------- hub unavailable

def test_offline_mode_raises_data_unavailable_fast(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    t0 = time.monotonic()
    with pytest.raises(DataUnavailable) as err:
        load_encoder_task(get_task("rte"), tok, cache_dir=str(tmp_path))
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert "'nyu-mll/glue', 'rte'" in msg and "HF_HOME" in msg and "save_to_disk" in msg
    assert isinstance(err.value, RuntimeError)


def test_unreachable_hub_is_probed_not_retried(tok, tmp_path, monkeypatch):
    from huggingface_hub import constants

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens on this port now
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(DataUnavailable, match="hub is unreachable"):
        load_encoder_task(get_task("nsmc"), tok, cache_dir=str(tmp_path))
    assert time.monotonic() - t0 < 10


def test_hub_probe_true_when_listening():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)  # the kernel completes the handshake from the backlog
    try:
        assert hub.hub_reachable(f"http://127.0.0.1:{srv.getsockname()[1]}", timeout=2)
    finally:
        srv.close()


def test_offline_task_uses_raw_loader(tok, monkeypatch):
    import dataclasses
    import sys
    import types

    fake = types.ModuleType("fake_rt_rows")
    fake.rows = lambda: {"train": [{"id": "x", "text": "The dog ran", "label": 1}],
                         "dev": [{"id": "y", "text": "a mat", "label": 0}], "test": []}
    monkeypatch.setitem(sys.modules, "fake_rt_rows", fake)
    task = dataclasses.replace(get_task("rt_polarity"), raw_loader="fake_rt_rows:rows")
    out = load_encoder_task(task, tok)
    assert sorted(out) == ["dev", "train"]
    assert out["train"][0]["input_ids"][:6].tolist() == [2, 4, 10, 12, 3, 0] and out["train"][0]["input_ids"].shape == (64,)
    assert int(out["dev"][0]["labels"]) == 0 and int(out["dev"][0]["lengths"]) == 4
    with pytest.raises(ValueError, match="needs a raw_loader"):
        dataclasses.replace(task, raw_loader=None)
