"""PTB block building (SPEC §7.2): per-chunk concatenation, remainder drop, BOS rule, loading."""
from __future__ import annotations

import time

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from kdqat.data import DataUnavailable
from kdqat.data.ptb import group_blocks, load_ptb, tokenize_lines

WORDS = ["<unk>", "<pad>", "<s>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog"]


def word_tokenizer(bos_post_processor: bool = False) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer: id = index in WORDS (``<s>`` = 2 is BOS)."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos_post_processor:  # like OPT's tokenizer: adds BOS on its own when add_special_tokens=True
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


def test_group_blocks_drops_remainder_per_chunk():
    lines = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    # chunks of 2 lines: [1..5] -> [1,2],[3,4] (5 dropped); [6..9] -> [6,7],[8,9]
    assert torch.equal(group_blocks(lines, block_size=2, chunk_lines=2),
                       torch.tensor([[1, 2], [3, 4], [6, 7], [8, 9]]))
    # one chunk: [1..9] -> 4 blocks, 9 dropped (a different result: the chunking matters)
    assert torch.equal(group_blocks(lines, block_size=2), torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]]))
    # a chunk shorter than a block yields nothing
    assert torch.equal(group_blocks(lines, block_size=4, chunk_lines=1), torch.tensor([[6, 7, 8, 9]]))
    empty = group_blocks([[1]], block_size=3)
    assert empty.shape == (0, 3) and empty.dtype == torch.long


def test_group_blocks_count_matches_formula():
    g = torch.Generator().manual_seed(0)
    lines = [list(range(int(n))) for n in torch.randint(0, 40, (2500,), generator=g)]
    out = group_blocks(lines, block_size=64)
    expect = sum(sum(len(x) for x in lines[s:s + 1000]) // 64 for s in range(0, 2500, 1000))
    assert out.shape == (expect, 64)
    flat = [t for x in lines[:1000] for t in x]
    assert out[0].tolist() == flat[:64]


@pytest.mark.parametrize("post", [False, True])
def test_tokenize_lines_bos_rule(post):
    tok = word_tokenizer(bos_post_processor=post)
    lines = ["the cat sat", "on a mat"]
    assert tokenize_lines(tok, lines, "opt") == [[2, 4, 5, 6], [2, 7, 9, 8]]
    assert tokenize_lines(tok, lines, "llama") == [[2, 4, 5, 6], [2, 7, 9, 8]]
    assert tokenize_lines(tok, lines, "gpt2") == [[4, 5, 6], [7, 9, 8]]
    with pytest.raises(ValueError, match="family"):
        tokenize_lines(tok, lines, "bert")


def test_load_ptb_from_saved_dataset(tmp_path):
    import datasets

    train = ["the cat sat on the mat"] * 3 + ["a dog"]
    val = ["a cat", "the dog sat"]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"sentence": train}),
                          "validation": datasets.Dataset.from_dict({"sentence": val}),
                          "test": datasets.Dataset.from_dict({"sentence": ["mat"]})}).save_to_disk(tmp_path / "ptb")
    out = load_ptb(word_tokenizer(), "opt", block_size=4, data_path=str(tmp_path / "ptb"))
    assert set(out) == {"train", "validation"}
    # train: 3 x [2,4,5,6,7,4,8] + [2,9,10] = 24 tokens -> 6 blocks, nothing dropped
    row = [2, 4, 5, 6, 7, 4, 8]
    assert torch.equal(out["train"], torch.tensor(row * 3 + [2, 9, 10]).view(6, 4))
    # validation: [2,9,5, 2,4,10,6] = 7 tokens -> 1 block, 3 dropped
    assert torch.equal(out["validation"], torch.tensor([[2, 9, 5, 2]]))


def test_load_ptb_offline_fails_fast(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(DataUnavailable, match="ptb_text_only"):
        load_ptb(word_tokenizer(), "gpt2", cache_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 5.0
