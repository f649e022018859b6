"""Per-family map from a Hugging Face model to the modules that capture hooks (SPEC §1.3, §5.1).

Modules are found by attribute NAME under ``model.base_model`` (never by class), so the map stays
valid after ``kdqat.quant.quantize_model`` has swapped ``nn.Linear`` / ``Conv1D`` for ``QuantLinear``
under the same attribute names.

Per layer l (``LayerParts``):
  attn      the module that calls the registered attention function (``module`` argument);
  q, k, v   separate Q/K/V projections, input ``[B,S,D]`` (None when fused);
  qkv       fused projection (GPT-2 ``c_attn``), output ``[B,S,3D]`` laid out as [Q | K | V];
  o         W_O, output ``[B,S,D]`` = W_O·concat(ctx) + b ("attn_output", SPEC "SA_output");
  sub       where "attn_sublayer" is read: the OUTPUT of ``sub`` when ``sub_is_input`` is False
            (post-LN BERT: LN(dropout(W_O ctx + b) + X_l), SPEC blk[1]), else its INPUT
            (pre-LN decoders: the residual stream right after the attention add).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_ENCODER = dict(layers="encoder.layer", attn="attention.self", q="attention.self.query",
                k="attention.self.key", v="attention.self.value", o="attention.output.dense",
                sub="attention.output", sub_is_input=False)
_OPT = dict(layers="decoder.layers", attn="self_attn", q="self_attn.q_proj", k="self_attn.k_proj",
            v="self_attn.v_proj", o="self_attn.out_proj", sub="final_layer_norm", sub_is_input=True)
FAMILIES = {
    "bert": _ENCODER,
    "roberta": _ENCODER,
    "gpt2": dict(layers="h", attn="attn", qkv="attn.c_attn", o="attn.c_proj", sub="ln_2",
                 sub_is_input=True),
    "opt": _OPT,
    "llama": dict(layers="layers", attn="self_attn", q="self_attn.q_proj", k="self_attn.k_proj",
                  v="self_attn.v_proj", o="self_attn.o_proj", sub="post_attention_layernorm",
                  sub_is_input=True),
    # GPT-Neo computes attention itself (no AttentionInterface): only the hook sites work.
    "gpt_neo": dict(layers="h", attn="attn.attention", q="attn.attention.q_proj",
                    k="attn.attention.k_proj", v="attn.attention.v_proj",
                    o="attn.attention.out_proj", sub="ln_2", sub_is_input=True, interface=False),
}


@dataclass
class LayerParts:
    attn: nn.Module
    o: nn.Module
    sub: nn.Module
    sub_is_input: bool
    q: nn.Module | None = None
    k: nn.Module | None = None
    v: nn.Module | None = None
    qkv: nn.Module | None = None


@dataclass
class Adapter:
    family: str
    stack: nn.Module           # owns the layers; its output's last_hidden_state = HF's last hidden
                               # state (after the final norm of decoders; OPT: model.decoder)
    layers: list[nn.Module]    # the L transformer layers, in order
    parts: list[LayerParts]
    uses_interface: bool       # attention goes through transformers' ALL_ATTENTION_FUNCTIONS


def get_adapter(model: nn.Module) -> Adapter:
    """The ``Adapter`` of a BERT/RoBERTa, GPT-2, OPT, LLaMA or GPT-Neo model (any head)."""
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family not in FAMILIES:
        raise NotImplementedError(
            f"Capture: model_type {family!r} has no adapter; supported: {', '.join(FAMILIES)}")
    table = dict(FAMILIES[family])
    cfg = model.config
    if family == "opt" and not cfg.do_layer_norm_before:  # OPT-350m: post-LN attention sub-layer
        table.update(sub="self_attn_layer_norm", sub_is_input=False)
    if family == "gpt2" and getattr(cfg, "reorder_and_upcast_attn", False):
        raise NotImplementedError("GPT-2 with reorder_and_upcast_attn=True bypasses the attention "
                                  "interface in eager mode; Capture does not support it")
    base = getattr(model, "base_model", model)
    stack_name, _, list_name = table["layers"].rpartition(".")
    stack = base.get_submodule(stack_name) if stack_name else base
    layers = list(getattr(stack, list_name))
    parts = []
    for layer in layers:
        get = layer.get_submodule
        names = ("q", "k", "v", "qkv")
        parts.append(LayerParts(attn=get(table["attn"]), o=get(table["o"]), sub=get(table["sub"]),
                                sub_is_input=table["sub_is_input"],
                                **{n: get(table[n]) for n in names if n in table}))
    return Adapter(family, stack, layers, parts, table.get("interface", True))
