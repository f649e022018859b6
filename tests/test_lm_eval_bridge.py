"""lm-eval 0.4.13 bridge on local YAML tasks: metrics equal hand computations from the model.

Tasks (tests/data/lm_eval_tasks): ``tiny_mc`` (multiple choice, acc / acc_norm) and ``tiny_gen``
(greedy generate_until, exact match). The model is a tiny random GPT-2 with a word-level tokenizer.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from kdqat.lm_eval_bridge import evaluate_lm, render_task_dir

TASKS = Path(__file__).parent / "data" / "lm_eval_tasks"
MC = [json.loads(x) for x in (TASKS / "tiny_mc.jsonl").read_text().splitlines()]
GEN = [json.loads(x) for x in (TASKS / "tiny_gen.jsonl").read_text().splitlines()]
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    words = {w for d in MC for t in [d["question"], *d["choices"]] for w in t.split()}
    words |= {w for d in GEN for w in (d["question"] + " " + d["answer"]).split()} | {"."}
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + sorted(words))}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = build_tokenizer()
    torch.manual_seed(3)
    # 4 unused extra logits, like OPT's padded vocabulary (50272 > len(tokenizer))
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok) + 4, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                       bos_token_id=2, eos_token_id=3, pad_token_id=1))
    model.generation_config.pad_token_id = 1
    return tok, model.eval(), tmp_path_factory.mktemp("tasks")


def manual_mc(model, tok, docs=MC, vocab_limit=None):
    """acc and acc_norm from summed continuation log-likelihoods (context + " " + choice)."""
    acc, acc_norm = [], []
    with torch.no_grad():
        for d in docs:
            ctx = tok.encode(d["question"])
            lls = []
            for ch in d["choices"]:
                whole = tok.encode(d["question"] + " " + ch)
                logits = model(torch.tensor([whole])).logits[0]
                if vocab_limit:
                    logits = logits[:, :vocab_limit]
                logp = torch.log_softmax(logits.float(), -1)
                lls.append(sum(float(logp[p - 1, whole[p]]) for p in range(len(ctx), len(whole))))
            lls = np.array(lls)
            acc.append(float(np.argmax(lls) == d["label"]))
            acc_norm.append(float(np.argmax(lls / np.array([len(c) for c in d["choices"]])) == d["label"]))
    return float(np.mean(acc)), float(np.mean(acc_norm))


def manual_greedy(model, tok, question, max_gen=4, stops=(".", "</s>")):
    """Greedy continuation, cut at the first stop string (lm-eval's generate_until post-processing)."""
    ids = tok.encode(question)
    new = []
    with torch.no_grad():
        for _ in range(max_gen):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(nxt)
            if nxt == tok.eos_token_id or any(s in tok.decode(new, skip_special_tokens=False) for s in stops):
                break
    text = tok.decode(new, skip_special_tokens=True)
    for s in stops:
        text = text.split(s)[0]
    return text


@pytest.fixture(scope="module")
def run(setup):
    """One harness call over both tasks; ``tiny_gen``'s even documents get the model's own greedy
    output as target (exact match by construction), the odd ones keep their fixed answers."""
    tok, model, tmp = setup
    task_dir = render_task_dir(TASKS, tmp / "both")
    outs = [manual_greedy(model, tok, d["question"]) for d in GEN]
    docs = [{**d, "answer": outs[i] if i % 2 == 0 else d["answer"]} for i, d in enumerate(GEN)]
    (task_dir / "tiny_gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    torch.manual_seed(123)
    random.seed(5)
    before = (torch.get_rng_state(), random.getstate())
    model.train()
    res = evaluate_lm(model, tok, ["tiny_mc", "tiny_gen"], include_path=task_dir, batch_size=8)
    after = (torch.get_rng_state(), random.getstate(), model.training)
    model.eval()
    return res, task_dir, outs, docs, before, after


def test_multiple_choice_matches_hand_computation(setup, run):
    tok, model, _ = setup
    res, task_dir, *_ = run
    assert str(task_dir) in (task_dir / "tiny_mc.yaml").read_text()  # absolute data path written
    acc, acc_norm = manual_mc(model, tok)
    assert 0.0 < acc < 1.0  # a discriminating case for this seed
    assert res["tiny_mc"] == pytest.approx({"acc": acc, "acc_norm": acc_norm}, abs=1e-12)


def test_generate_until_exact_match(run):
    res, _, outs, docs, *_ = run
    expect = float(np.mean([outs[i] == d["answer"] for i, d in enumerate(docs)]))
    assert expect >= 0.5
    assert res["tiny_gen"] == pytest.approx({"exact_match": expect}, abs=1e-12)


def test_state_restored(run):
    *_, before, after = run
    assert torch.equal(after[0], before[0]) and after[1] == before[1]  # lm-eval reseeds; we restore
    assert after[2]  # train mode restored


def test_limit_and_vocab_limit(setup):
    tok, model, tmp = setup
    task_dir = render_task_dir(TASKS, tmp / "limit")
    # first 3 documents only; logits cut to the tokenizer's vocabulary like the official OPT adaptor
    widths = []
    spy = model.register_forward_hook(lambda m, i, o: widths.append(o.logits.shape[-1]))
    res = evaluate_lm(model, tok, ["tiny_mc"], include_path=task_dir, limit=3, vocab_limit=len(tok), batch_size=8)
    spy.remove()
    assert widths and set(widths) == {len(tok)}  # the harness saw the cut logits
    cut = manual_mc(model, tok, MC[:3], vocab_limit=len(tok))
    assert (res["tiny_mc"]["acc"], res["tiny_mc"]["acc_norm"]) == pytest.approx(cut, abs=1e-12)
    assert model(torch.tensor([[4, 5]])).logits.shape[-1] == len(tok) + 4  # hook removed


def test_unreachable_hub_fails_fast(setup, monkeypatch):
    import time

    import datasets
    from huggingface_hub import constants

    from kdqat import hub
    from kdqat.data import DataUnavailable

    tok, model, tmp = setup
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # as if online mode ...
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)  # ... with the hub unreachable
    task_dir = render_task_dir(TASKS, tmp / "hub")
    t0 = time.perf_counter()
    with pytest.raises(DataUnavailable, match="tiny_hub"):
        evaluate_lm(model, tok, ["tiny_hub"], include_path=task_dir)
    assert time.perf_counter() - t0 < 15.0  # no ~25 s of hub retries
    assert datasets.config.HF_HUB_OFFLINE is False and constants.HF_HUB_OFFLINE is False  # restored
