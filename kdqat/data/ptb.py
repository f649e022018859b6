"""PTB language-modelling blocks exactly as the TSLD pipeline builds them (SPEC §7.2, §9 item 25).

1. Each line of the ``sentence`` column is tokenized on its own (:func:`tokenize_lines`):
   OPT and LLaMA prepend their BOS token to *every line*; GPT-2 / GPT-Neo add nothing; no newline
   or EOS is inserted between lines.
2. Lines are taken in consecutive chunks of 1000 (the ``datasets.map(batched=True)`` batch size);
   within a chunk the token lists are concatenated and cut into ``block_size`` blocks; the
   remainder of every chunk is dropped (:func:`group_blocks`). A chunk shorter than one block
   yields nothing.
3. ``labels = input_ids`` (the HF model shifts internally, SPEC §7.4), so only the ids are kept.

Splits: ``train`` for training, ``validation`` for perplexity; ``test`` is never used.
"""
from __future__ import annotations

import torch

BOS_FAMILIES = ("opt", "llama")          # tokenizers that prepend BOS to every line
NO_BOS_FAMILIES = ("gpt2", "gpt_neo")    # GPT-2 BPE: nothing added
PTB_SPLITS = ("train", "validation")


def tokenize_lines(tokenizer, lines: list[str], family: str) -> list[list[int]]:
    """Token ids of every line, BOS prepended per line for OPT/LLaMA (SPEC §7.2).

    The BOS rule is applied explicitly (``add_special_tokens=False`` + ``bos_token_id``) so that it
    does not depend on how a tokenizer's post-processor is configured. Returns one list per line.
    """
    if family in BOS_FAMILIES:
        bos = tokenizer.bos_token_id
        if bos is None:
            raise ValueError(f"family {family!r} needs a BOS token but the tokenizer has none")
        prefix = [bos]
    elif family in NO_BOS_FAMILIES:
        prefix = []
    else:
        raise ValueError(f"unknown decoder family {family!r}; valid: {', '.join(BOS_FAMILIES + NO_BOS_FAMILIES)}")
    if not lines:
        return []
    ids = tokenizer(list(lines), add_special_tokens=False)["input_ids"]
    return [prefix + list(x) for x in ids]


def group_blocks(token_lists: list[list[int]], block_size: int = 512, chunk_lines: int = 1000) -> torch.Tensor:
    """Concatenate per ``chunk_lines`` lines and cut into blocks, dropping each chunk's remainder.

    ``token_lists``: one id list per line (in dataset order). Returns LongTensor ``[n, block_size]``
    with ``n = Σ_chunks floor(len(chunk tokens) / block_size)`` (``[0, block_size]`` when empty).
    """
    if block_size <= 0 or chunk_lines <= 0:
        raise ValueError("block_size and chunk_lines must be positive")
    blocks: list[list[int]] = []
    for start in range(0, len(token_lists), chunk_lines):
        flat = [t for line in token_lists[start:start + chunk_lines] for t in line]
        usable = (len(flat) // block_size) * block_size
        blocks.extend(flat[i:i + block_size] for i in range(0, usable, block_size))
    if not blocks:
        return torch.empty(0, block_size, dtype=torch.long)
    return torch.tensor(blocks, dtype=torch.long)


def ptb_blocks(tokenizer, lines_per_split: dict, family: str, block_size: int = 512) -> dict[str, torch.Tensor]:
    """``{split: LongTensor[n, block_size]}`` from ``{split: list of raw lines}`` (no hub access)."""
    return {s: group_blocks(tokenize_lines(tokenizer, list(lines), family), block_size)
            for s, lines in lines_per_split.items()}


def load_ptb(tokenizer, family: str, block_size: int = 512, *, cache_dir: str | None = None,
             data_path: str | None = None) -> dict[str, torch.Tensor]:
    """PTB ``train`` and ``validation`` blocks from the hub dataset ``ptb_text_only`` (column ``sentence``).

    Hub access goes through :func:`kdqat.data.encoder.load_raw_splits` (the one place for it):
    a ``DataUnavailable`` naming the dataset and how to pre-cache it is raised within seconds when
    the hub is unreachable and the dataset is not cached; ``data_path`` reads a
    ``DatasetDict.save_to_disk`` folder instead.
    """
    from kdqat.data.encoder import load_raw_splits
    from kdqat.data.tasks import get_task

    raw = load_raw_splits(get_task("ptb"), cache_dir=cache_dir, data_path=data_path)
    return ptb_blocks(tokenizer, {s: raw[s]["sentence"] for s in PTB_SPLITS}, family, block_size)
