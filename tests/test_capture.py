"""kdqat.capture: sites equal HF eager outputs bit for bit, hand-computed attention, A8 placement,
passivity (bitwise-unchanged model) and exact restoration (SPEC §1.3, §3.1)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdqat.capture import SITES, Capture, attention
from kdqat.quant.functions import quantize_activation


B, S = 2, 6
FAMILIES = ("bert", "gpt2", "opt", "llama")


def _build(family, impl=None, seed=0, **kw):
    from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,
                              GPTNeoConfig, GPTNeoForCausalLM, LlamaConfig, LlamaForCausalLM, OPTConfig,
                              OPTForCausalLM)
    extra = {"attn_implementation": impl} if impl else {}
    if family == "bert":
        cfg, cls = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, vocab_size=100, **kw, **extra), BertForSequenceClassification
    elif family == "gpt2":
        cfg, cls = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=16, **kw, **extra), \
            GPT2LMHeadModel
    elif family == "opt":
        cfg, cls = OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                             vocab_size=100, max_position_embeddings=16, word_embed_proj_dim=32,
                             **kw, **extra), OPTForCausalLM
    elif family == "llama":
        cfg, cls = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=64, vocab_size=100,
                               max_position_embeddings=16, **kw, **extra), LlamaForCausalLM
    else:
        cfg, cls = GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                                vocab_size=100, max_position_embeddings=16, window_size=4, **kw, **extra), \
            GPTNeoForCausalLM
    torch.manual_seed(seed)
    return cls(cfg).eval()


def _pair(family, **kw):
    """(model with its default attention implementation, eager model with the same weights)."""
    m = _build(family, **kw)
    e = _build(family, impl="eager", **kw)
    e.load_state_dict(m.state_dict())
    return m, e


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class _FakeQuant(nn.Module):
    """Stand-in for kdqat.quant.QuantLinear: not an nn.Linear, same weight/bias names."""

    def __init__(self, lin):
        super().__init__()
        self.weight, self.bias = lin.weight, lin.bias

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) * 2.0


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_equal_hf_eager_bitwise(family):
    model, eager = _pair(family)
    x = _inputs()
    ref = eager(**x, output_attentions=True, output_hidden_states=True)
    before, plain = model.config._attn_implementation, model(**x).logits
    with Capture(model, record=SITES) as cap:
        out = model(**x)
        assert model.config._attn_implementation == attention.NAME
    assert torch.equal(out.logits, ref.logits)
    L, H, d = 2, 4, 8
    rec = cap.records
    assert len(rec["hidden"]) == L + 1 and all(len(rec[s]) == L for s in SITES if s != "hidden")
    for a, b in zip(rec["probs"], ref.attentions, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(rec["hidden"], ref.hidden_states, strict=True):
        assert torch.equal(a, b)
    for site in ("q", "k", "v", "context"):
        assert rec[site][0].shape == (B, H, S, d)  # LLaMA: 2 KV heads repeated to 4
    assert rec["scores"][0].shape == rec["probs"][0].shape == (B, H, S, S)
    assert rec["attn_output"][0].shape == rec["attn_sublayer"][0].shape == (B, S, 32)
    # restored exactly
    assert model.config._attn_implementation == before == "sdpa" and not attention._BOUND
    assert torch.equal(model(**x).logits, plain)


def test_hand_computed_attention():
    """q = k = I, v = [[1,2],[3,4]], scaling 1: P = [[e,1],[1,e]]/(e+1); padding key -> weight 0."""
    mod = nn.Module().eval()
    q = torch.eye(2).view(1, 1, 2, 2)
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    ctx, w = attention.attend(mod, q, q, v, None, 1.0, 0.0)
    a = math.e / (math.e + 1)
    assert torch.allclose(w[0, 0], torch.tensor([[a, 1 - a], [1 - a, a]]))
    expect = torch.tensor([[a + 3 * (1 - a), 2 * a + 4 * (1 - a)], [(1 - a) + 3 * a, 2 * (1 - a) + 4 * a]])
    assert ctx.shape == (1, 2, 1, 2) and torch.allclose(ctx[0, :, 0], expect)
    mask = torch.tensor([0.0, torch.finfo(torch.float32).min]).view(1, 1, 1, 2)
    ctx, w = attention.attend(mod, q, q, v, mask, 1.0, 0.0)
    assert torch.equal(w[0, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.equal(ctx[0, :, 0], torch.tensor([[1.0, 2.0], [1.0, 2.0]]))


def test_bert_site_relations():
    model, _ = _pair("bert")
    x = _inputs()
    with Capture(model, record=SITES) as cap:
        model(**x)
    r, lay = cap.records, model.bert.encoder.layer[0]
    q = lay.attention.self.query(r["hidden"][0]).view(B, S, 4, 8).transpose(1, 2)
    assert torch.equal(r["q"][0], q)
    scores = torch.matmul(r["q"][0], r["k"][0].transpose(2, 3)) * 8 ** -0.5
    assert torch.equal(r["scores"][0][0], scores[0])  # no padding in row 0: no mask added
    assert (r["scores"][0][1, :, :, 4:] <= -1e38).all() and (r["scores"][0][1, :, :, :4] > -100).all()
    assert torch.equal(r["context"][0], torch.matmul(r["probs"][0], r["v"][0]))
    flat = r["context"][0].transpose(1, 2).reshape(B, S, 32)
    assert torch.equal(r["attn_output"][0], lay.attention.output.dense(flat))
    assert torch.equal(r["attn_sublayer"][0], lay.attention.output.LayerNorm(r["attn_output"][0] + r["hidden"][0]))


@pytest.mark.parametrize("family,kw", [("gpt2", {}), ("opt", {}), ("llama", {}),
                                       ("opt", {"do_layer_norm_before": False})])
def test_decoder_sublayer_is_residual_after_attention(family, kw):
    model, _ = _pair(family, **kw)
    with Capture(model, record=("hidden", "attn_output", "attn_sublayer")) as cap:
        model(**_inputs())
    r = cap.records
    for li in range(2):
        resid = r["hidden"][li] + r["attn_output"][li]
        if kw:  # OPT-350m style post-LN: the sub-layer output is LN(X + attn)
            resid = model.model.decoder.layers[li].self_attn_layer_norm(resid)
        assert torch.equal(r["attn_sublayer"][li], resid)


@pytest.mark.parametrize("family", FAMILIES)
def test_passive_capture_is_bitwise_identity(family):
    model, _ = _pair(family)
    x = _inputs()
    ref = model(**x).logits
    for rec in ((), ("hidden", "attn_output", "attn_sublayer")):
        with Capture(model, record=rec):
            assert model.config._attn_implementation == "sdpa"  # untouched: nothing needs attention
            assert torch.equal(model(**x).logits, ref)


def test_train_mode_probs_before_dropout_and_same_rng_as_eager():
    kw = {"attention_probs_dropout_prob": 0.5, "hidden_dropout_prob": 0.0}
    model, eager = _pair("bert", **kw)
    x = _inputs()
    with torch.no_grad():
        clean = eager(**x, output_attentions=True).attentions[0]
    model.train(), eager.train()
    torch.manual_seed(7)
    ref = eager(**x, output_attentions=True)
    torch.manual_seed(7)
    with Capture(model, record=("probs",)) as cap:
        out = model(**x)
    assert torch.equal(out.logits, ref.logits)  # same ops, same dropout draws as HF eager
    assert torch.equal(cap.records["probs"][0], clean)  # layer 0 input has no dropout: pre-dropout probs
    assert not torch.equal(ref.attentions[0], clean)  # HF returns them after dropout
    assert torch.allclose(cap.records["probs"][1].sum(-1), torch.ones(B, 4, S))


def test_act_quant_sites():
    model, _ = _pair("bert")
    x = _inputs()
    with Capture(model, record=("q", "k", "v", "probs")) as fp:
        model(**x)
    with Capture(model, record=("q", "k", "v", "probs", "context"), act_quant_bits=8) as q8:
        model(**x)
    for s in ("q", "k", "v"):  # layer 0 sees the same input: A8 of the FP tensor, clip ±2.5
        assert torch.equal(q8.records[s][0], quantize_activation(fp.records[s][0], 8, 2.5))
    qq, kk, vv = (q8.records[s][0] for s in ("q", "k", "v"))
    probs = torch.softmax(torch.matmul(qq, kk.transpose(2, 3)) * 8 ** -0.5 + _bert_mask(x), dim=-1)
    assert torch.allclose(q8.records["probs"][0], probs, atol=1e-7)  # recorded probs: NOT quantized
    assert q8.records["probs"][0].unique().numel() > 127
    expect = torch.matmul(quantize_activation(q8.records["probs"][0], 8, 2.5), vv)
    assert torch.equal(q8.records["context"][0], expect)


def _bert_mask(x):
    m = x["attention_mask"][:, None, None, :].float()
    return (1.0 - m) * torch.finfo(torch.float32).min


def test_softmax_fn_replaces_softmax():
    model, _ = _pair("bert")
    calls = []

    def uniform(scores):
        calls.append(scores.shape)
        return torch.full_like(scores, 1.0 / scores.shape[-1])

    with Capture(model, record=("probs", "v", "context"), softmax_fn=uniform) as cap:
        model(**_inputs())
    assert len(calls) == 2
    assert torch.equal(cap.records["probs"][0], torch.full((B, 4, S, S), 1.0 / S))
    assert torch.allclose(cap.records["context"][0], cap.records["v"][0].mean(2, keepdim=True).expand(-1, -1, S, -1))


def test_exit_restores_hooks_impl_and_output_even_on_error():
    model, _ = _pair("bert")
    x = _inputs()
    ref, n_hooks = model(**x).logits, _hook_count(model)
    with pytest.raises(KeyError):
        with Capture(model, record=SITES, act_quant_bits=8) as cap:
            assert _hook_count(model) > n_hooks
            cap.intervene("O", {"attn_output": []})
            raise KeyError("boom")
    assert _hook_count(model) == n_hooks and not attention._BOUND
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(model(**x).logits, ref)


def test_records_reset_each_forward_and_clear():
    model, _ = _pair("bert")
    with Capture(model, record=("probs", "hidden")) as cap:
        model(**_inputs())
        first = cap.records["probs"]
        model(**_inputs(seed=2))
        assert len(cap.records["probs"]) == 2 and len(cap.records["hidden"]) == 3
        assert len(first) == 2 and first is not cap.records["probs"]
        cap.clear()
        assert cap.records == {"probs": [], "hidden": []}


def test_hooks_find_swapped_linear_modules_by_name():
    model, _ = _pair("bert")
    for lay in model.bert.encoder.layer:
        lay.attention.output.dense = _FakeQuant(lay.attention.output.dense)
        lay.attention.self.query = _FakeQuant(lay.attention.self.query)
    with Capture(model, record=("hidden", "q", "attn_output")) as cap:
        model(**_inputs())
    r, lay = cap.records, model.bert.encoder.layer[1]
    assert torch.equal(r["q"][1], lay.attention.self.query(r["hidden"][1]).view(B, S, 4, 8).transpose(1, 2))
    assert len(r["attn_output"]) == 2


def test_errors_unknown_site_nesting_and_gpt_neo():
    model, _ = _pair("bert")
    with pytest.raises(ValueError, match="unknown site"):
        Capture(model, record=("attn_probs",))
    with Capture(model, record=("probs",)):
        with pytest.raises(RuntimeError, match="already under an active Capture"):
            with Capture(model, record=("probs",)):
                pass
    neo, neo_eager = _pair("gpt_neo")
    with pytest.raises(NotImplementedError, match="GPT-Neo"):
        with Capture(neo, record=("probs",)):
            pass
    x = _inputs()
    ref = neo_eager(**x, output_hidden_states=True)
    with Capture(neo, record=("hidden", "attn_output", "attn_sublayer")) as cap:
        out = neo(**x)
        with pytest.raises(NotImplementedError, match="GPT-Neo"):
            cap.intervene("M", {"probs": []})
    assert torch.equal(out.logits, ref.logits)
    for a, b in zip(cap.records["hidden"], ref.hidden_states, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(cap.records["attn_sublayer"][0], cap.records["hidden"][0] + cap.records["attn_output"][0])
