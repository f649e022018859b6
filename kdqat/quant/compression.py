"""Model size and compression rate under a quantization spec (the "compression rate is 14.9x / 15.4x"
captions of the EMNLP'22 tables, SPEC §8.1; module selection of SPEC §2.3 / §2.4).

Size accounting (bits), over the unique parameters of the model:

* a parameter that stays FP (biases, LayerNorm, position / token-type embeddings, classifier, ...):
  32 bits per element, whatever the dtype it is held in;
* the weight of a quantized module: ``bits`` per element, plus one 32-bit scale per quantization group
  (1 per tensor, one per row of the ``[out, in]`` weight - or of the stored ``[in, out]`` matrix for
  ``conv1d_rows="official"`` - or numel/group_size per group); TWN stores α only (Δ is not needed at
  inference); ``asym`` adds one ``bits``-bit zero point per group; ``learned_twn`` stores its clip value
  c = γ·mean|W| as the one 32-bit scale per group.

compression rate = (all parameters at 32 bits) / (the quantized size above).
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from .presets import resolve_spec, select_modules
from .spec import QuantSpec, WeightSpec


def _n_groups(module: nn.Module, w: WeightSpec, conv1d_rows: str, is_conv1d: bool) -> int:
    if w.granularity == "tensor":
        return 1
    if w.granularity == "group":
        return module.weight.numel() // w.group_size
    rows_dim = 1 if (is_conv1d and conv1d_rows == "output") else 0
    return module.weight.shape[rows_dim]


def model_size_bits(model: nn.Module, spec: QuantSpec | str, **overrides) -> tuple[int, int]:
    """``(fp32_bits, quantized_bits)`` of ``model`` (unswapped; may live on the meta device) under
    ``spec`` (a ``QuantSpec`` or a preset name, with ``overrides``)."""
    spec = resolve_spec(spec, **overrides)
    quant: dict[int, int] = {}  # id(weight) -> bits it costs when quantized
    for _, module, kind in select_modules(model, spec):
        w = spec.weight if kind == "linear" else spec.embedding.weight
        is_conv1d = kind == "linear" and not isinstance(module, nn.Linear)
        groups = _n_groups(module, w, spec.conv1d_rows, is_conv1d)
        extra = groups * w.bits if w.method == "asym" else 0  # zero points
        quant[id(module.weight)] = module.weight.numel() * w.bits + groups * 32 + extra
    fp32 = qbits = 0
    for p in model.parameters():  # unique Parameters (tied weights counted once)
        fp32 += 32 * p.numel()
        qbits += quant.get(id(p), 32 * p.numel())
    return fp32, qbits


def _as_config(config):
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        with open(config) as f:
            config = json.load(f)
    d = dict(config)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def compression_rate(config, spec: QuantSpec | str = "kim2022_w2a8", num_labels: int = 2,
                     **overrides) -> float:
    """FP32 size / quantized size (scales at 32 bits each, see the module docstring) of
    ``AutoModelForSequenceClassification.from_config(config)`` with ``num_labels`` labels, built on the
    meta device (no memory, no download). ``config``: a ``PretrainedConfig``, a dict with
    ``model_type``, or a path to a ``config.json``. bert-base-uncased -> 14.88 (14.9x), bert-large-uncased
    -> 15.39 (15.4x) under ``kim2022_w2a8``.
    """
    from transformers import AutoModelForSequenceClassification

    cfg = _as_config(config)
    cfg = cfg.__class__.from_dict({**cfg.to_dict(), "num_labels": num_labels})
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(cfg)
    fp32, qbits = model_size_bits(model, spec, **overrides)
    return fp32 / qbits
