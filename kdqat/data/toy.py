"""Synthetic tasks for tiny models (tests and smoke tables): token ids only, no tokenizer.

Both are generated from a seed, so a test builds the same data anywhere in milliseconds.
- ``toy_cls``: sequences of 6..(max_len−2) content tokens between [CLS]=1 and [SEP]=2, padded with 0;
  label 1 iff more tokens fall in the low third of the vocabulary than in the high third.
- ``toy_lm``: a sparse random Markov chain (4 likely successors per token); blocks of ``block`` tokens.
Layouts match the real pipelines: encoder dict of tensors input_ids/attention_mask/token_type_ids/
labels/lengths [N, S]; LM LongTensor [n_blocks, block].
"""
from __future__ import annotations

import torch


def toy_cls(n_train: int = 512, n_dev: int = 128, max_len: int = 32, vocab: int = 128, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        lengths = torch.randint(6, max_len - 1, (n,), generator=g)
        ids = torch.zeros(n, max_len, dtype=torch.long)
        labels = torch.zeros(n, dtype=torch.long)
        lo, hi = 3 + (vocab - 3) // 3, vocab - (vocab - 3) // 3
        for i in range(n):
            content = torch.randint(3, vocab, (int(lengths[i]),), generator=g)
            ids[i, 0] = 1
            ids[i, 1:1 + len(content)] = content
            ids[i, 1 + len(content)] = 2
            labels[i] = int((content < lo).sum() > (content >= hi).sum())
        real = lengths + 2
        mask = (torch.arange(max_len)[None] < real[:, None]).long()
        out[split] = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                      "labels": labels, "lengths": real}
    return out


def toy_lm(n_train: int = 64, n_dev: int = 16, block: int = 64, vocab: int = 128, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    succ = torch.randint(0, vocab, (vocab, 4), generator=g)
    out = {}
    for split, n in (("train", n_train), ("validation", n_dev)):
        x = torch.empty(n, block, dtype=torch.long)
        x[:, 0] = torch.randint(0, vocab, (n,), generator=g)
        for t in range(1, block):
            pick = torch.randint(0, 4, (n,), generator=g)
            noise = torch.rand(n, generator=g) < 0.1
            nxt = succ[x[:, t - 1], pick]
            x[:, t] = torch.where(noise, torch.randint(0, vocab, (n,), generator=g), nxt)
        out[split] = x
    return out


def load_toy_cls(task, tokenizer=None) -> dict:
    """Task loader (``TaskSpec.loader``) of ``toy_cls``: {"train", "dev"} dicts of tensors."""
    return toy_cls(max_len=task.max_len)


def load_toy_lm(task, tokenizer=None) -> dict:
    """Task loader of ``toy_lm``: {"train", "validation"} LongTensor blocks."""
    return toy_lm(block=task.max_len)
