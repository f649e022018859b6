"""Block perplexity (SPEC §7.4) against a hand-written loop over a tiny random GPT-2."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdqat.perplexity import block_perplexity


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                     bos_token_id=0, eos_token_id=0))
    return m.train()  # training mode on purpose: dropout must be off during scoring


def manual_token_ces(model, blocks):
    """Per-block list of per-token CE: target x[t+1] given x[:t+1]; the first token is never a target."""
    out = []
    with torch.no_grad():
        for x in blocks:
            logits = model.eval()(input_ids=x[None]).logits[0].double()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            out.append([-float(logp[t, x[t + 1]]) for t in range(x.shape[0] - 1)])
    model.train()
    return out


def test_matches_manual_loop_full_batches(model):
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 50, (8, 12), generator=g)
    res = block_perplexity(model, blocks, batch_size=4)
    ces = manual_token_ces(model, blocks)
    mean = sum(sum(c) for c in ces) / (8 * 11)
    assert res["loss"] == pytest.approx(mean, rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(mean), rel=1e-5)
    assert model.training  # mode restored


def test_partial_last_batch_weighted_by_blocks(model):
    g = torch.Generator().manual_seed(2)
    blocks = torch.randint(0, 50, (5, 10), generator=g)
    ces = manual_token_ces(model, blocks)
    per_block = [sum(c) / len(c) for c in ces]
    # HF Trainer: each batch mean repeated B_b times -> overall block mean (= token mean here)
    expect = sum(per_block) / 5
    res = block_perplexity(model, blocks, batch_size=2)
    assert res["loss"] == pytest.approx(expect, rel=1e-5)
    # an unweighted mean over the 3 batch means would differ
    batch_means = [sum(per_block[0:2]) / 2, sum(per_block[2:4]) / 2, per_block[4]]
    assert abs(sum(batch_means) / 3 - expect) > 1e-4
    # batch size does not change the result
    assert block_perplexity(model, blocks, batch_size=5)["loss"] == pytest.approx(expect, rel=1e-5)


def test_rejects_bad_shapes(model):
    with pytest.raises(ValueError):
        block_perplexity(model, torch.zeros(0, 8, dtype=torch.long))
    with pytest.raises(ValueError):
        block_perplexity(model, torch.zeros(3, 1, dtype=torch.long))
