"""Alpaca instruction data (SPEC §7.5): exact prompts, answers, prompt masking, loading."""
from __future__ import annotations

import time

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from kdqat.data import DataUnavailable
from kdqat.data.instruct import (IGNORE_INDEX, build_prompt, collate, encode, examples_from_records,
                                 format_record, load_instruction_task)

HEAD = ("Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\n")
PIQA = [{"goal": "How to dry a towel?", "sol1": "Hang it outside.", "sol2": "Put it in water.", "label": 0},
        {"goal": "Open a jar", "sol1": "Hit it.", "sol2": "Twist the lid.", "label": 1}]
OBQA = {"id": "7", "question_stem": "The sun is a", "answerKey": "B",
        "choices": {"text": ["planet", "star", "moon", "comet"], "label": ["A", "B", "C", "D"]}}
ARC = {"id": "x", "question": "Which is a liquid?", "answerKey": "3",
       "choices": {"text": ["ice", "steam", "water", "rock"], "label": ["1", "2", "3", "4"]}}
GSM = {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2 + 3 = 5\n#### 5"}
ALL_TEXT = [r.get("goal", "") + r.get("sol1", "") + r.get("sol2", "") for r in PIQA] + [HEAD, "### Response:"]


def piece_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    """Word/punctuation-level tokenizer over every piece of the test texts; ``<s>``=2 BOS, ``</s>``=3 EOS."""
    pre = pre_tokenizers.Whitespace()
    pieces = sorted({p for t in ALL_TEXT for p, _ in pre.pre_tokenize_str(t)})
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>", "</s>"] + pieces)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


def test_prompts_and_answers_per_task():
    assert format_record("piqa", PIQA[0]) == ("How to dry a towel? ", "Hang it outside.")
    assert format_record("piqa", PIQA[1]) == ("Open a jar ", "Twist the lid.")
    assert format_record("openbookqa", OBQA) == ("The sun is a ", "star")
    assert format_record("arc_easy", ARC) == ("Which is a liquid? ", "water")
    assert format_record("arc_challenge", ARC) == ("Which is a liquid? ", "water")
    assert format_record("gsm8k", GSM) == (GSM["question"], GSM["answer"])
    assert build_prompt("The sun is a ") == HEAD + "The sun is a \n\n### Response:"
    assert build_prompt(GSM["question"]).endswith("How many?\n\n### Response:")


def test_bad_records_rejected():
    with pytest.raises(ValueError, match="validation split"):
        format_record("piqa", {**PIQA[0], "label": -1})  # HF PIQA test labels (SPEC §12.9)
    with pytest.raises(ValueError, match="answerKey"):
        format_record("openbookqa", {**OBQA, "answerKey": "E"})
    with pytest.raises(ValueError, match="unknown"):
        format_record("csqa", OBQA)


@pytest.mark.parametrize("bos", [True, False])
def test_encode_masks_prompt_but_last_token(bos):
    tok = piece_tokenizer(bos)
    vocab = tok.get_vocab()
    prompt = build_prompt(format_record("piqa", PIQA[0])[0])
    pre = pre_tokenizers.Whitespace()
    prompt_ids = [2] * bos + [vocab[p] for p, _ in pre.pre_tokenize_str(prompt)]
    answer_ids = [vocab[p] for p in ["Hang", "it", "outside", "."]]
    ex = encode(tok, prompt, "Hang it outside.")
    assert ex["input_ids"] == prompt_ids + answer_ids + [3]
    n = len(prompt_ids)
    assert ex["labels"] == [IGNORE_INDEX] * (n - 1) + [vocab[":"]] + answer_ids + [3]
    assert prompt_ids[-1] == vocab[":"]  # the kept prompt label is the ':' of "### Response:"
    short = encode(tok, prompt, "Hang it outside.", max_len=n + 1)
    assert short["input_ids"] == (prompt_ids + answer_ids)[:n + 1]
    assert short["labels"] == [IGNORE_INDEX] * (n - 1) + [vocab[":"], answer_ids[0]]


def test_collate_right_pads():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=1)
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [8, 1, 1]]))
    assert torch.equal(batch["labels"], torch.tensor([[-100, 6, 7], [8, -100, -100]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))


def test_load_from_saved_dataset_equals_records(tmp_path):
    import datasets

    tok = piece_tokenizer(True)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(PIQA),
                          "validation": datasets.Dataset.from_list(PIQA[::-1])}).save_to_disk(tmp_path / "piqa")
    out = load_instruction_task("piqa", tok, data_path=str(tmp_path / "piqa"))
    assert out["train"] == examples_from_records("piqa", PIQA, tok, 512)
    assert out["eval"] == examples_from_records("piqa", PIQA[::-1], tok, 512)


def test_offline_fails_fast(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(DataUnavailable, match="allenai/ai2_arc"):
        load_instruction_task("arc_easy", piece_tokenizer(True), cache_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 5.0
