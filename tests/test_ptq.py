"""PTQ baselines (SPEC §7.8): grid, GPTQ and AWQ against hand computations, RTN and tiny models."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from kdqat.ptq import (awq_quantize_model, awq_quantize_weight, block_linears, decoder_blocks, get_weight,
                       gptq_quantize_model, gptq_quantize_weight, grid_params, quantize_to_grid, rtn,
                       rtn_quantize_model)
from kdqat.ptq.gptq import HessianAccumulator
from kdqat.quant.functions import asym_values


def levels_per_row(w):
    return max(len(torch.unique(r)) for r in w)


# ----------------------------------------------------------------------------- grid


def test_grid_hand_values():
    s, z = grid_params(torch.tensor([[0.0, 0.3, 1.5]]), bits=2)  # scale 1.5/3, zero 0
    assert torch.allclose(quantize_to_grid(torch.tensor([[0.0, 0.3, 1.5]]), s, z, 2), torch.tensor([[0.0, 0.5, 1.5]]))
    w = torch.tensor([[1.0, -0.5, 0.25, 0.0]])  # sym 4-bit: scale 2/15, zero 8, codes 0..15 = -8..7
    q = rtn(w, bits=4, sym=True)  # 7.5 -> clamped to 7; -3.75 -> -4; 1.875 -> 2
    assert torch.allclose(q, torch.tensor([[14, -8, 4, 0]]) / 15.0)


def test_asym_grid_is_spec_quantizer_bitwise():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(quantize_to_grid(w, *grid_params(w, 4), 4), asym_values(w, 4))
    assert torch.equal(rtn(w, 4), asym_values(w, 4))
    assert torch.equal(rtn(w, 4, group_size=16), asym_values(w.reshape(-1, 16), 4).reshape(16, 64))
    assert levels_per_row(rtn(w, 4)) <= 16 and levels_per_row(rtn(w, 3, sym=True)) <= 8
    with pytest.raises(ValueError, match="group_size"):
        rtn(w, 4, group_size=24)


# ----------------------------------------------------------------------------- GPTQ


def test_gptq_hand_example():
    # grid of the row [0.08, 0.26, 0, 0.6] (2 bit): lo 0, hi 0.6 -> scale s = 0.2, zero 0
    w = torch.tensor([[0.08, 0.26, 0.0, 0.6]])
    h = torch.tensor([[2.0, 1.2, 0, 0], [1.2, 2.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 2.0]])
    s, _ = grid_params(w, 2)
    # col 0: 0.08/s = 0.4 -> 0, error 0.08 moves col 1 by 0.08*H01/H11: 0.26 + 0.048 = 0.308 -> 1.54 -> 2
    q = gptq_quantize_weight(w, h, bits=2, damp=0.0)
    assert torch.allclose(q, torch.tensor([[0.0, 2.0, 0.0, 3.0]]) * s, atol=1e-7)
    assert torch.allclose(rtn(w, 2), torch.tensor([[0.0, 1.0, 0.0, 3.0]]) * s, atol=1e-7)  # 1.3 -> 1


@pytest.mark.parametrize("group_size,sym", [(-1, False), (8, False), (-1, True)])
def test_gptq_diagonal_hessian_is_rtn_bitwise(group_size, sym):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 32, generator=g)
    acc = HessianAccumulator(32)
    acc.add(torch.diag(torch.rand(32, generator=g) + 0.5))  # one-hot token rows -> diagonal, unequal H
    q = gptq_quantize_weight(w, acc.value(), bits=4, group_size=group_size, sym=sym, block_size=16)
    assert torch.equal(q, rtn(w, 4, group_size, sym))


@pytest.mark.parametrize("group_size", [-1, 16])
def test_gptq_beats_rtn_on_correlated_inputs(group_size):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, 64, generator=g)
    x = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)  # correlated features
    acc = HessianAccumulator(64)
    acc.add(x[:256])
    acc.add(x[256:])
    h = acc.value()
    assert torch.allclose(h, 2 * x.t() @ x / 512, rtol=1e-4, atol=1e-2)
    q = gptq_quantize_weight(w, h, bits=4, group_size=group_size, block_size=32)
    err = ((x @ (w - q).t()) ** 2).sum()
    err_rtn = ((x @ (w - rtn(w, 4, group_size)).t()) ** 2).sum()
    assert err < 0.8 * err_rtn
    if group_size < 0:
        assert levels_per_row(q) <= 16


# ----------------------------------------------------------------------------- AWQ


def test_awq_alpha_zero_is_rtn_and_search_never_worse():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 64, generator=g)
    x = torch.randn(256, 64, generator=g)
    x[:, :3] *= 30.0  # salient input channels
    w0, info0 = awq_quantize_weight(w, x, alphas=[0.0])
    assert torch.equal(w0, rtn(w, 4)) and info0["alpha"] == 0.0
    w_eff, info = awq_quantize_weight(w, x, n_grid=20)
    assert info["losses"][0] == info["loss_rtn"]  # alpha = 0 is exactly RTN inside the search
    assert info["loss"] <= info["loss_rtn"] and info["loss"] == min(info["losses"])
    assert info["alpha"] > 0 and info["loss"] < 0.9 * info["loss_rtn"]  # salient channels protected
    s_x = x.abs().mean(0)
    s = s_x ** info["alpha"]
    assert torch.allclose(info["scale"], s / (s.max() * s.min()).sqrt(), rtol=1e-5)
    assert levels_per_row(info["q_scaled"]) <= 16
    assert torch.allclose(w_eff * info["scale"], info["q_scaled"], rtol=1e-5, atol=1e-6)
    y = x @ w.t()
    assert float(((x @ w_eff.t() - y) ** 2).mean()) == pytest.approx(info["loss"], rel=1e-3)


# ----------------------------------------------------------------------------- tiny models

CONFIGS = {
    "gpt2": (GPT2LMHeadModel, GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                          bos_token_id=0, eos_token_id=0), 4),
    "opt": (OPTForCausalLM, OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      ffn_dim=64, max_position_embeddings=32, word_embed_proj_dim=32), 6),
    "llama": (LlamaForCausalLM, LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                            max_position_embeddings=32), 7),
}


def tiny(family):
    cls, cfg, _ = CONFIGS[family]
    torch.manual_seed(0)
    return cls(cfg).eval()


def calib():
    g = torch.Generator().manual_seed(4)
    return [torch.randint(0, 64, (2, 16), generator=g), {"input_ids": torch.randint(0, 64, (2, 16), generator=g)}]


def first_linear_inputs(model, block_index):
    """Inputs of the first linear of a block, read with a plain hook on a full model forward."""
    _, blocks = decoder_blocks(model)
    lin = next(iter(block_linears(blocks[block_index]).values()))
    xs = []
    h = lin.register_forward_hook(lambda m, i, o: xs.append(i[0].reshape(-1, i[0].shape[-1])))
    with torch.no_grad():
        for b in calib():
            model(input_ids=b if isinstance(b, torch.Tensor) else b["input_ids"], use_cache=False)
    h.remove()
    return torch.cat(xs), lin


def untouched(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lm_head" in n or "emb" in n
            or "wte" in n or "wpe" in n or "norm" in n or "ln_" in n}


@pytest.mark.parametrize("family", list(CONFIGS))
def test_gptq_model_end_to_end(family):
    model = tiny(family)
    orig = copy.deepcopy(model)
    keep = untouched(model)
    report = gptq_quantize_model(model, calib(), bits=4)
    assert len(report["layers"]) == 2 * CONFIGS[family][2]
    errs = list(report["layers"].values())
    assert sum(e["err"] for e in errs) < sum(e["err_rtn"] for e in errs)
    _, blocks = decoder_blocks(model)
    for block in blocks:
        for m in block_linears(block).values():
            assert levels_per_row(get_weight(m)) <= 16
    assert all(torch.equal(p, keep[n]) for n, p in model.named_parameters() if n in keep)
    # block 1 was calibrated on the outputs of the *quantized* block 0
    x, lin = first_linear_inputs(model, 1)
    _, lin_orig = first_linear_inputs(orig, 1)
    expect = gptq_quantize_weight(get_weight(lin_orig), 2 * x.t() @ x / x.shape[0], bits=4)
    assert torch.allclose(get_weight(lin), expect, atol=1e-6)
    assert torch.isfinite(model(calib()[0]).logits).all()


@pytest.mark.parametrize("family", list(CONFIGS))
def test_awq_model_end_to_end(family):
    model = tiny(family)
    orig = copy.deepcopy(model)
    keep = untouched(model)
    report = awq_quantize_model(model, calib(), bits=4, n_grid=10)
    assert len(report["layers"]) == 2 * CONFIGS[family][2]
    assert all(e["err"] <= e["err_rtn"] for e in report["layers"].values())
    assert all(torch.equal(p, keep[n]) for n, p in model.named_parameters() if n in keep)
    # block 1 was searched on the full-precision model's inputs
    x, lin_orig = first_linear_inputs(orig, 1)
    expect, _ = awq_quantize_weight(get_weight(lin_orig), x, bits=4, n_grid=10)
    lin = next(iter(block_linears(decoder_blocks(model)[1][1]).values()))
    assert torch.allclose(get_weight(lin), expect, atol=1e-6)
    assert torch.isfinite(model(calib()[0]).logits).all()


def test_true_sequential_and_rtn_model():
    a, b, c = tiny("gpt2"), tiny("gpt2"), tiny("gpt2")
    gptq_quantize_model(a, calib(), true_sequential=False)
    rep = gptq_quantize_model(b, calib(), true_sequential=True)
    assert rep["true_sequential"]
    la, lb = (list(block_linears(decoder_blocks(m)[1][0]).values()) for m in (a, b))
    assert torch.equal(la[0].weight, lb[0].weight)  # first linear sees the same inputs in both modes
    assert not torch.equal(la[2].weight, lb[2].weight)  # later ones see the quantized attention
    rtn_quantize_model(c, bits=4)
    w = c.transformer.h[0].mlp.c_fc.weight  # Conv1D [in, out]: per output channel = per column
    assert torch.equal(w.detach().t(), asym_values(tiny("gpt2").transformer.h[0].mlp.c_fc.weight.detach().t(), 4))
