"""Named quantization presets and ``quantize_model`` (SPEC §2.3, §2.4, §3, §9.1-3, §9.23-24, §12.6).

Presets (``PRESETS``):

* ``kim2022_w2a8`` - encoders (TernaryBERT / P1 / P2): every ``nn.Linear`` inside the encoder layers
  (Q, K, V, attention output, FFN1, FFN2) and the pooler dense: TWN per tensor, clip 2.5 with the
  clip-masked STE, 8-bit input activations clipped at ±2.5; word embedding: per-row TWN (same clip and
  STE); classifier, position / token-type embeddings, LayerNorm and all biases stay FP.
* ``tsld_w2a16`` - decoders (P3): every Linear / Conv1D except names containing ``lm_head`` and the last
  module of ``named_modules()``: TWN per row (the released script's per-channel default), identity
  STE, no clip, no activation quantization. Per-tensor W2 (the paper's Table-1 QAT rows, SPEC §12.6):
  ``quantize_model(model, "tsld_w2a16", granularity="tensor")``.
* ``tsld_w4a16`` - same selection, asymmetric min-max 4-bit with zero point per row.

Overrides: any keyword of ``quantize_model`` / ``resolve_spec`` is a field of ``WeightSpec`` or
``QuantSpec`` (see ``QuantSpec.override``); ``conv1d_rows="official"`` gives TSLD's per-input-row
GPT-2 quantization (SPEC §9.23).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .spec import EmbeddingSpec, QuantSpec, WeightSpec

if TYPE_CHECKING:  # torch and .modules are imported by the functions that touch a model, so that
    from torch import nn  # PRESETS / resolve_spec (registry validation) stay torch-free

_ENCODER = WeightSpec(method="twn", bits=2, granularity="tensor", clip=2.5, ste="clip")
_DECODER = dict(include=(r".",), exclude=(r"lm_head",), skip_last_module=True, act_bits=None,
                embedding=None)

PRESETS: dict[str, QuantSpec] = {
    "kim2022_w2a8": QuantSpec(
        name="kim2022_w2a8", weight=_ENCODER, act_bits=8, act_clip=2.5, linear_act=True,
        include=(r"(^|\.)encoder\.layer\.\d+\.|(^|\.)pooler\.dense$",),
        embedding=EmbeddingSpec(pattern=r"word_embeddings$",
                                weight=WeightSpec(method="twn", bits=2, granularity="row", clip=2.5))),
    "tsld_w2a16": QuantSpec(
        name="tsld_w2a16", weight=WeightSpec(method="twn", bits=2, granularity="row", clip=None,
                                             ste="identity"), **_DECODER),
    "tsld_w4a16": QuantSpec(
        name="tsld_w4a16", weight=WeightSpec(method="asym", bits=4, granularity="row", clip=None,
                                             ste="identity"), **_DECODER),
}


def resolve_spec(spec: QuantSpec | str, **overrides) -> QuantSpec:
    """A ``QuantSpec`` from a preset name or a spec, with ``overrides`` applied."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown quantization preset {spec!r}; valid: {', '.join(sorted(PRESETS))}")
        spec = PRESETS[spec]
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"expected a QuantSpec or a preset name, got {type(spec).__name__}")
    return spec.override(**overrides) if overrides else spec


def select_modules(model: nn.Module, spec: QuantSpec) -> list[tuple[str, nn.Module, str]]:
    """``(name, module, kind)`` for every module ``spec`` quantizes, kind "linear" or "embedding".

    Raises ``ValueError`` if the model already holds quant modules, or naming an include pattern
    (or the embedding pattern) that matches no Linear/Conv1D (resp. nn.Embedding) module.
    """
    from torch import nn

    from .modules import QuantEmbedding, QuantLinear, _is_conv1d
    named = list(model.named_modules())
    if any(isinstance(m, (QuantLinear, QuantEmbedding)) for _, m in named):
        raise ValueError("model already holds QuantLinear/QuantEmbedding modules (quantized twice?)")
    last = named[-1][0] if spec.skip_last_module else None
    linears = [(n, m) for n, m in named if isinstance(m, nn.Linear) or _is_conv1d(m)]
    for p in spec.include:
        if not any(re.search(p, n) for n, _ in linears):
            raise ValueError(f"include pattern {p!r} matches no Linear/Conv1D module of "
                             f"{type(model).__name__}")
    out = [(n, m, "linear") for n, m in linears
           if n != last and any(re.search(p, n) for p in spec.include)
           and not any(re.search(p, n) for p in spec.exclude)]
    if spec.embedding is not None:
        embs = [(n, m, "embedding") for n, m in named
                if isinstance(m, nn.Embedding) and re.search(spec.embedding.pattern, n)]
        if not embs:
            raise ValueError(f"embedding pattern {spec.embedding.pattern!r} matches no nn.Embedding module "
                             f"of {type(model).__name__}")
        out += embs
    return out


@dataclass
class QuantReportRow:
    """One swapped module."""

    name: str
    original_class: str
    weight_quant: str
    bits: int
    granularity: str
    act_quant: str


@dataclass
class QuantReport:
    """What ``quantize_model`` did: the resolved spec and one row per swapped module."""

    spec: QuantSpec
    rows: list[QuantReportRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    @property
    def act_bits(self) -> int | None:
        """``spec.act_bits``: bit-width of the attention-internal A8 (None = no activation quantization)."""
        return self.spec.act_bits

    @property
    def act_clip(self) -> float | None:
        """``spec.act_clip``: the fixed activation clip (SPEC §3.1)."""
        return self.spec.act_clip

    def names(self) -> list[str]:
        return [r.name for r in self.rows]

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "modules": [asdict(r) for r in self.rows]}

    def __str__(self) -> str:
        head = ("module", "original", "weight quant", "bits", "granularity", "act quant")
        body = [(r.name, r.original_class, r.weight_quant, str(r.bits), r.granularity, r.act_quant)
                for r in self.rows]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
        lines = [f"quantization spec {self.spec.name!r}: {len(self.rows)} modules", fmt(head),
                 fmt(tuple("-" * w for w in widths)), *map(fmt, body)]
        return "\n".join(lines)


def quantize_model(model: nn.Module, spec: QuantSpec | str = "kim2022_w2a8", **overrides) -> QuantReport:
    """Swap, in place, every selected Linear/Conv1D for a ``QuantLinear`` and every selected
    Embedding for a ``QuantEmbedding`` (same attribute name in the parent, same Parameter objects).

    ``spec``: a ``QuantSpec`` or a name in ``PRESETS``; ``overrides``: fields changed on it (e.g.
    ``granularity="tensor"``). Returns a ``QuantReport`` whose ``spec`` is the resolved spec
    (``report.spec.act_bits`` / ``act_clip`` configure the attention-internal A8).
    """
    from .modules import QuantEmbedding, QuantLinear
    spec = resolve_spec(spec, **overrides)
    report = QuantReport(spec)
    act = f"A{spec.linear_act_bits} sym clip {spec.act_clip}" if spec.linear_act_bits else "-"
    for name, module, kind in select_modules(model, spec):
        if kind == "linear":
            new = QuantLinear(module, spec.weight, spec.linear_act_bits, spec.act_clip, spec.conv1d_rows)
            wspec, a = spec.weight, act
            gran = wspec.granularity
            if new.layout == "conv1d" and spec.conv1d_rows == "official" and gran != "tensor":
                gran += " (Conv1D [in] rows)"
        else:
            new = QuantEmbedding(module, spec.embedding.weight)
            wspec, a = spec.embedding.weight, "-"
            gran = wspec.granularity
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
        report.rows.append(QuantReportRow(name, type(module).__name__, wspec.describe(), wspec.bits,
                                          gran, a))
    return report
