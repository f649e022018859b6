"""QuantLinear / QuantEmbedding / quantize_model / compression_rate on tiny random HF models
(SPEC §2.1, §2.3, §2.4, §3.1, §8.1, §9.23)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM)
from transformers.pytorch_utils import Conv1D

from kdqat.quant import (PRESETS, QuantEmbedding, QuantLinear, QuantSpec, WeightSpec, compression_rate,
                         model_size_bits, quantize_model, quantize_weight)

DATA = Path(__file__).parent / "data"
IDS = torch.tensor([[5, 17, 3, 0, 0], [9, 17, 42, 8, 0]])


def tiny_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=64, vocab_size=100, num_labels=2))


def tiny(family):
    torch.manual_seed(0)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                          bos_token_id=99, eos_token_id=99))
    if family == "opt":
        return OPTForCausalLM(OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32))
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_kim2022_bert_selection_identity_and_backward():
    model = tiny_bert()
    before, ids_before = snapshot(model), [id(p) for p in model.parameters()]
    report = quantize_model(model, "kim2022_w2a8")
    layer = [f"bert.encoder.layer.{i}.{s}" for i in range(2) for s in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")]
    assert report.names() == layer + ["bert.pooler.dense", "bert.embeddings.word_embeddings"]
    assert [id(p) for p in model.parameters()] == ids_before  # same Parameter objects, same order
    assert list(model.state_dict()) == list(before)
    model.load_state_dict(before, strict=True)  # FP checkpoints load unchanged
    emb = model.bert.embeddings
    assert type(model.classifier) is nn.Linear and type(emb.position_embeddings) is nn.Embedding
    assert type(emb.token_type_embeddings) is nn.Embedding and type(emb.LayerNorm) is nn.LayerNorm
    assert isinstance(emb.word_embeddings, QuantEmbedding) and emb.word_embeddings.padding_idx == 0
    q = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(q, QuantLinear) and (q.act_bits, q.act_clip) == (8, 2.5)
    assert report.spec.act_bits == 8 and report.spec.act_clip == 2.5
    assert (report.act_bits, report.act_clip) == (8, 2.5)

    model.train()
    model(input_ids=IDS, attention_mask=(IDS > 0).long(), labels=torch.tensor([0, 1])).loss.backward()
    for name in report.names():
        g = model.get_submodule(name).weight.grad
        assert g is not None and g.abs().sum() > 0, name
    after = snapshot(model)  # forward/backward never touches any parameter (latent weights stay FP)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_quantized_bert_layer_equals_manual_computation():
    model = tiny_bert().eval()
    quantize_model(model, "kim2022_w2a8")
    mod = model.bert.encoder.layer[0].intermediate.dense
    seen = {}
    mod.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach(), y=o.detach()))
    with torch.no_grad():
        model(input_ids=IDS)
    x, w, b = seen["x"], mod.weight.detach(), mod.bias.detach()
    # activation: clamp ±2.5, scale 127/max|x| over the whole tensor, round (SPEC §3.1)
    xc = x.clamp(-2.5, 2.5)
    s = 127 / xc.abs().max()
    xq = torch.round(xc * s) / s
    # weight: TWN per tensor (SPEC §2.1)
    a = w.clamp(-2.5, 2.5).abs()
    keep = a > 0.7 * a.mean()
    alpha = (a * keep).sum() / keep.sum()
    wq = alpha * torch.sign(w) * keep
    assert mod.quantized_weight().unique().numel() == 3
    torch.testing.assert_close(mod.quantized_weight(), wq, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(seen["y"], F.linear(xq, wq, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family,preset,kw", [("gpt2", "tsld_w2a16", {}), ("opt", "tsld_w4a16", {}),
                                              ("llama", "tsld_w2a16", {"granularity": "tensor"})])
def test_tsld_decoders_forward_backward(family, preset, kw):
    model = tiny(family)
    before = snapshot(model)
    head = model.lm_head
    report = quantize_model(model, preset, **kw)
    per_layer = {"gpt2": 4, "opt": 6, "llama": 7}[family]
    assert len(report) == 2 * per_layer
    assert model.lm_head is head and type(head) is nn.Linear
    assert "lm_head" not in " ".join(report.names()) and all(r.act_quant == "-" for r in report)
    assert report.act_bits is None
    assert not any(isinstance(m, QuantEmbedding) for m in model.modules())
    model.train()
    model(input_ids=IDS + 1, labels=IDS + 1).loss.backward()
    for r in report:
        mod = model.get_submodule(r.name)
        assert mod.weight.grad is not None and mod.weight.grad.abs().sum() > 0, r.name
        qw = mod.quantized_weight().detach()
        rows = qw if mod.layout == "linear" else qw.t()
        if kw.get("granularity") == "tensor":
            assert qw.unique().numel() == 3 and r.granularity == "tensor"
        else:
            assert max(row.unique().numel() for row in rows) <= (16 if preset == "tsld_w4a16" else 3)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_conv1d_output_channels_vs_official_rows():
    torch.manual_seed(1)
    conv = Conv1D(nf=6, nx=8)  # weight [in=8, out=6]
    spec = WeightSpec(method="twn", bits=2, granularity="row", clip=None, ste="identity")
    per_out, official = QuantLinear(conv, spec), QuantLinear(conv, spec, conv1d_rows="official")
    w = conv.weight.detach()

    def twn_rows(m):  # per-row TWN by hand
        a = m.abs()
        keep = a > 0.7 * a.mean(dim=1, keepdim=True)
        return (a * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True) * torch.sign(m) * keep

    q_out, q_off = per_out.quantized_weight().detach(), official.quantized_weight().detach()
    torch.testing.assert_close(q_out, twn_rows(w.t()).t(), rtol=1e-6, atol=0)  # one α per output column
    torch.testing.assert_close(q_off, twn_rows(w), rtol=1e-6, atol=0)          # one α per input row
    assert all(c[c != 0].abs().unique().numel() == 1 for c in q_out.t())
    assert all(r[r != 0].abs().unique().numel() == 1 for r in q_off)
    assert not torch.allclose(q_out, q_off)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(per_out(x), x @ q_out + conv.bias, rtol=1e-5, atol=1e-6)
    assert per_out(x).shape == (2, 3, 6) and per_out.weight is conv.weight


def test_embedding_unique_rows_bitwise_equal_whole_matrix():
    torch.manual_seed(2)
    emb = nn.Embedding(50, 16, padding_idx=0)
    ref_w = emb.weight.detach().clone().requires_grad_()
    qe = QuantEmbedding(emb, WeightSpec(method="twn", bits=2, granularity="row", clip=2.5))
    ids = torch.tensor([[3, 7, 3, 0, 0], [49, 7, 1, 2, 0]])
    g = torch.randn(2, 5, 16)
    out = qe(ids)
    (out * g).sum().backward()
    whole = quantize_weight(ref_w, "twn", 2, "row", clip=2.5)  # quantize all [V, D] rows
    ref = F.embedding(ids, whole, padding_idx=0)
    (ref * g).sum().backward()
    assert torch.equal(out, ref.detach())
    assert torch.equal(emb.weight.grad, ref_w.grad)
    assert emb.weight.grad[0].abs().sum() == 0 and emb.weight.grad[3].abs().sum() > 0


def test_embedding_keeps_max_norm_and_attributes():
    torch.manual_seed(3)
    emb = nn.Embedding(10, 4, padding_idx=2, max_norm=0.5, scale_grad_by_freq=True)
    twin = nn.Embedding(10, 4, padding_idx=2, max_norm=0.5)
    twin.weight.data.copy_(emb.weight.data * 3)
    emb.weight.data.mul_(3)
    qe = QuantEmbedding(emb, WeightSpec(method="twn", bits=2, granularity="row", clip=2.5))
    assert (qe.padding_idx, qe.max_norm, qe.norm_type, qe.scale_grad_by_freq) == (2, 0.5, 2.0, True)
    ids = torch.tensor([1, 4, 4, 9])
    qe(ids), twin(ids)
    assert torch.equal(emb.weight, twin.weight)  # latent rows renormalised in place like nn.Embedding
    with pytest.raises(ValueError, match="sparse"):
        QuantEmbedding(nn.Embedding(5, 2, sparse=True), WeightSpec(granularity="row"))


def test_learned_twn_gamma_gets_gradient():
    model = tiny_bert()
    report = quantize_model(model, "kim2022_w2a8", method="learned_twn", clip=None, ste="identity")
    q = model.bert.encoder.layer[1].output.dense
    assert q.weight_gamma.shape == (1, 1) and float(q.weight_gamma.detach()) == 1.0
    model(input_ids=IDS, labels=torch.tensor([0, 1])).loss.backward()
    assert q.weight_gamma.grad is not None and q.weight_gamma.grad.abs().sum() > 0
    assert report.rows[0].weight_quant == "learned_twn/W2/tensor/identity"
    row = QuantLinear(nn.Linear(8, 5), WeightSpec(method="learned_twn", granularity="row", clip=None,
                                                  ste="identity", init_scale=0.7))
    assert row.weight_gamma.shape == (5, 1) and torch.all(row.weight_gamma == 0.7)


def test_errors_name_the_culprit():
    with pytest.raises(ValueError, match=r"'kim2023'.*kim2022_w2a8.*tsld_w2a16"):
        quantize_model(tiny_bert(), "kim2023")
    with pytest.raises(ValueError, match=r"include pattern 'decoder.*' matches no Linear/Conv1D module"):
        quantize_model(tiny_bert(), QuantSpec(include=(r"encoder\.layer", r"decoder\.layers")))
    with pytest.raises(ValueError, match=r"'twn' does not support bits=3"):
        quantize_model(tiny("gpt2"), "tsld_w2a16", bits=3)
    with pytest.raises(ValueError, match=r"'asym' does not support bits=9"):
        WeightSpec(method="asym", bits=9, clip=None, ste="identity")
    with pytest.raises(ValueError, match=r"'binary' does not support bits=2"):
        WeightSpec(method="binary", bits=2)
    with pytest.raises(ValueError, match=r"unknown QuantSpec override.*'granularty'"):
        quantize_model(tiny_bert(), "kim2022_w2a8", granularty="row")
    with pytest.raises(ValueError, match="embedding pattern"):
        quantize_model(tiny("gpt2"), "kim2022_w2a8", include=(r"\.h\.",))
    model = tiny_bert()
    quantize_model(model, "kim2022_w2a8")
    with pytest.raises(ValueError, match="already"):
        quantize_model(model, "kim2022_w2a8")


def test_report_table_and_dict():
    report = quantize_model(tiny("gpt2"), "tsld_w2a16", conv1d_rows="official")
    d = report.to_dict()
    assert d["spec"]["name"] == "tsld_w2a16" and d["spec"]["weight"]["granularity"] == "row"
    assert d["modules"][0] == {"name": "transformer.h.0.attn.c_attn", "original_class": "Conv1D",
                               "weight_quant": "twn/W2/row/identity", "bits": 2,
                               "granularity": "row (Conv1D [in] rows)", "act_quant": "-"}
    text = str(report).splitlines()
    assert text[0] == "quantization spec 'tsld_w2a16': 8 modules" and text[1].startswith("module")
    assert text[3].startswith("transformer.h.0.attn.c_attn  Conv1D")
    assert set(PRESETS) == {"kim2022_w2a8", "tsld_w2a16", "tsld_w4a16"}


def test_tsld_skips_last_module_and_override_equals_spec_object():
    names = quantize_model(tiny_bert(), "tsld_w2a16").names()  # last of named_modules() = classifier
    assert "classifier" not in names and "bert.pooler.dense" in names and len(names) == 13
    a = quantize_model(tiny("opt"), "tsld_w2a16", granularity="tensor").spec
    assert a == PRESETS["tsld_w2a16"].override(granularity="tensor") and a.weight.granularity == "tensor"
    assert PRESETS["tsld_w2a16"].weight.granularity == "row"  # presets are never mutated


def test_size_bits_by_hand_on_tiny_bert():
    # tiny BERT (V 100, P 512, T 2, D 32, L 2, I 64, 2 labels), kim2022_w2a8:
    # quantized: word emb 100·32 + 2·(4·32·32 + 2·32·64) + pooler 32·32 = 20608 weights at 2 bits,
    # scales 100 (rows) + 2·6 + 1 = 113 at 32 bits; FP: everything else.
    model = tiny_bert()
    total = sum(p.numel() for p in model.parameters())
    fp32, qbits = model_size_bits(model, "kim2022_w2a8")
    assert fp32 == 32 * total
    assert qbits == 20608 * 2 + 113 * 32 + (total - 20608) * 32


def test_compression_rate_published():
    assert round(compression_rate(DATA / "bert_base_uncased_config.json", "kim2022_w2a8"), 1) == 14.9
    assert round(compression_rate(DATA / "bert_large_uncased_config.json", "kim2022_w2a8"), 1) == 15.4
