"""Fake-quant modules swapped in place of ``nn.Linear`` / GPT-2 ``Conv1D`` / ``nn.Embedding``
(SPEC §2.1, §2.4, §3.1).

Both modules take over the ORIGINAL ``weight`` / ``bias`` Parameter objects under the same names, so
state_dict keys, optimizer groups and FP checkpoints are unchanged. Latent weights stay in full
precision and are re-quantized at every forward (fake quantization: the matmul runs on the
de-quantized values). Only ``learned_twn`` adds a Parameter, ``weight_gamma`` ([rows, 1]).

Shapes: ``nn.Linear`` weight ``[out, in]``, y = x·Wᵀ + b; ``Conv1D`` weight ``[in, out]``, y = x·W + b
with x ``[..., in]`` and y ``[..., out]``. Quantization groups are rows of the ``[out, in]``
orientation (one scale per output channel) unless ``conv1d_rows="official"``, which quantizes the
stored ``[in, out]`` matrix row by row as TSLD does (SPEC §9.23).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .functions import learned_scale_ternary, quantize_activation, quantize_weight
from .spec import CONV1D_ROWS, WeightSpec


def fake_quant(w: torch.Tensor, spec: WeightSpec, gamma: torch.Tensor | None = None) -> torch.Tensor:
    """De-quantized ``w`` (same shape) under ``spec``; rows of ``w`` are the "row" groups (SPEC §2)."""
    if spec.method == "learned_twn":
        return learned_scale_ternary(w, gamma, spec.granularity)
    return quantize_weight(w, spec.method, spec.bits, spec.granularity, spec.group_size,
                           spec.threshold, spec.clip)


def _is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a pinned dependency
        return False
    return isinstance(module, Conv1D)


class QuantLinear(nn.Module):
    """Fake-quant replacement of an ``nn.Linear`` or a GPT-2 ``Conv1D``.

    forward(x [..., in]) -> [..., out]: x is first fake-quantized by ``quantize_activation(x, act_bits,
    act_clip)`` (one dynamic max-abs scale over the whole tensor, SPEC §3.1) when ``act_bits`` is set,
    then multiplied by ``quantized_weight()``.
    """

    def __init__(self, module: nn.Module, spec: WeightSpec, act_bits: int | None = None,
                 act_clip: float | None = 2.5, conv1d_rows: str = "output"):
        super().__init__()
        if conv1d_rows not in CONV1D_ROWS:
            raise ValueError(f"unknown conv1d_rows {conv1d_rows!r}; valid: {', '.join(CONV1D_ROWS)}")
        if isinstance(module, nn.Linear):
            self.layout = "linear"
            self.in_features, self.out_features = module.in_features, module.out_features
        elif _is_conv1d(module):
            self.layout = "conv1d"
            self.in_features, self.out_features = module.nx, module.nf
            self.nx, self.nf = module.nx, module.nf
        else:
            raise TypeError(f"QuantLinear wraps nn.Linear or Conv1D, got {type(module).__name__}")
        self.original_class = type(module).__name__
        self.weight = module.weight
        self.bias = module.bias
        self.spec = spec
        self.act_bits, self.act_clip = act_bits, act_clip
        self.conv1d_rows = conv1d_rows
        # Conv1D stores [in, out]: transpose to [out, in] so that a "row" is an output channel.
        self._transpose = self.layout == "conv1d" and conv1d_rows == "output"
        if spec.method == "learned_twn":
            rows = self._oriented(self.weight).shape[0] if spec.granularity == "row" else 1
            w = self.weight
            self.weight_gamma = nn.Parameter(torch.full((rows, 1), float(spec.init_scale),
                                                        dtype=w.dtype, device=w.device))
        else:
            self.weight_gamma = None

    def _oriented(self, w: torch.Tensor) -> torch.Tensor:
        return w.t() if self._transpose else w

    def quantized_weight(self) -> torch.Tensor:
        """De-quantized weight in the stored layout (``[out, in]`` Linear, ``[in, out]`` Conv1D), with STE."""
        q = fake_quant(self._oriented(self.weight), self.spec, self.weight_gamma)
        return self._oriented(q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits is not None:
            x = quantize_activation(x, self.act_bits, self.act_clip)
        w = self.quantized_weight()
        if self.layout == "linear":
            return F.linear(x, w, self.bias)
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), w)  # as HF Conv1D.forward
        return out.view(x.shape[:-1] + (self.nf,))

    def extra_repr(self) -> str:
        act = f"A{self.act_bits}(clip={self.act_clip})" if self.act_bits is not None else "A-fp"
        rows = f", conv1d_rows={self.conv1d_rows}" if self.layout == "conv1d" else ""
        return (f"{self.original_class}(in={self.in_features}, out={self.out_features}), "
                f"{self.spec.describe()}, {act}{rows}")


class QuantEmbedding(nn.Module):
    """Fake-quant replacement of ``nn.Embedding`` (SPEC §2.1: per-row ternary word embedding).

    forward(ids [...]) -> [..., D]. padding_idx (zero gradient on that row), max_norm / norm_type
    (in-place renorm of the looked-up latent rows, as ``F.embedding``) and scale_grad_by_freq are
    kept; ``sparse=True`` is refused. With per-row groups (granularity "row", or "group" with
    group_size dividing D) only the rows of the unique ids in the batch are quantized, which gives
    bitwise the values of quantizing the whole ``[V, D]`` matrix (tests/test_quant_modules.py).
    """

    def __init__(self, module: nn.Embedding, spec: WeightSpec):
        super().__init__()
        if not isinstance(module, nn.Embedding):
            raise TypeError(f"QuantEmbedding wraps nn.Embedding, got {type(module).__name__}")
        if module.sparse:
            raise ValueError("QuantEmbedding does not support sparse=True embeddings")
        if spec.method == "learned_twn":
            raise ValueError("weight method 'learned_twn' is for Linear/Conv1D only, not embeddings")
        self.original_class = type(module).__name__
        self.num_embeddings, self.embedding_dim = module.num_embeddings, module.embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = module.padding_idx, module.max_norm, module.norm_type
        self.scale_grad_by_freq, self.sparse = module.scale_grad_by_freq, False
        self.weight = module.weight
        self.spec = spec

    @property
    def rowwise(self) -> bool:
        """True when every quantization group lies inside one embedding row."""
        s = self.spec
        return s.granularity == "row" or (s.granularity == "group" and self.embedding_dim % s.group_size == 0)

    def quantized_weight(self) -> torch.Tensor:
        """The whole de-quantized ``[V, D]`` matrix (with STE)."""
        return fake_quant(self.weight, self.spec)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.max_norm is not None:
            input = input.contiguous()
            with torch.no_grad():
                torch.embedding_renorm_(self.weight, input, self.max_norm, self.norm_type)
        if not self.rowwise:
            return F.embedding(input, self.quantized_weight(), self.padding_idx, None, 2.0,
                               self.scale_grad_by_freq, False)
        ids, inv = torch.unique(input, return_inverse=True)
        q = fake_quant(self.weight.index_select(0, ids), self.spec)  # [U, D]
        out = F.embedding(inv, q, None, None, 2.0, self.scale_grad_by_freq, False)
        if self.padding_idx is not None:  # no gradient reaches the padding row
            out = torch.where((input == self.padding_idx).unsqueeze(-1), out.detach(), out)
        return out

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, "
                f"{self.spec.describe()}")
