"""Quantization spec: what ``quantize_model`` does to which modules (SPEC §2, §3, §9.1-3, §9.23-24).

A ``QuantSpec`` is frozen data. Every field is a protocol switch whose default is recorded with a
result (DESIGN.md principle 2); ``QuantSpec.override(**kw)`` returns a copy with fields changed,
routing each key to the weight spec or to the top level (their field names never collide), e.g.
``spec.override(granularity="tensor")`` turns TSLD's per-channel W2 into per-tensor (SPEC §12.6).

Supported (method, bits): twn 2, learned_twn 2, binary 1, sym 2..8, asym 2..8; anything else is a
``ValueError`` naming both. This module imports nothing of the project, and not torch: the
registry validates presets and overrides through it without loading torch.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

# The granularities ``kdqat.quant.functions`` implements (its GRANULARITIES, which imports torch;
# tests/test_runner.py asserts the two tuples are equal).
GRANULARITIES = ("tensor", "row", "group")

WEIGHT_METHODS = ("twn", "sym", "asym", "binary", "learned_twn")
STES = ("clip", "identity")
CONV1D_ROWS = ("output", "official")
_BITS = {"twn": (2,), "learned_twn": (2,), "binary": (1,), "sym": tuple(range(2, 9)),
         "asym": tuple(range(2, 9))}


@dataclass(frozen=True)
class WeightSpec:
    """Weight fake-quantizer of one module kind (SPEC §2).

    method: twn (TWN ternary, §2.1/§2.4), sym (symmetric max-abs, per tensor, §2.2), asym (min-max
    with zero point, §2.4), binary (sign·mean|W|), learned_twn (learned-scale ternary, γ per row or
    scalar, initialised to ``init_scale``, §2.4). granularity: one scale per tensor / per row of the
    ``[out, in]`` weight / per ``group_size`` consecutive elements. threshold: Δ = threshold·mean|W|
    (TWN). clip: the latent weight is clamped to ±clip first; ``ste="clip"`` then zeroes the gradient
    where |W| >= clip (encoders, §2.1), ``ste="identity"`` passes it unchanged and needs clip=None
    (decoders, §9.24).
    """

    method: str = "twn"
    bits: int = 2
    granularity: str = "tensor"
    group_size: int = -1
    threshold: float = 0.7
    clip: float | None = 2.5
    ste: str = "clip"
    init_scale: float = 1.0

    def __post_init__(self):
        if self.method not in WEIGHT_METHODS:
            raise ValueError(f"unknown weight method {self.method!r}; valid: {', '.join(WEIGHT_METHODS)}")
        if self.bits not in _BITS[self.method]:
            raise ValueError(f"weight method {self.method!r} does not support bits={self.bits}; "
                             f"supported: {', '.join(map(str, _BITS[self.method]))}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; valid: {', '.join(GRANULARITIES)}")
        if self.granularity == "group" and self.group_size <= 0:
            raise ValueError("granularity='group' needs group_size > 0")
        if self.method == "sym" and self.granularity != "tensor":
            raise ValueError("weight method 'sym' is per tensor only (SPEC §2.2); use granularity='tensor'")
        if self.method == "learned_twn" and self.granularity == "group":
            raise ValueError("weight method 'learned_twn' supports granularity 'tensor' or 'row'")
        if self.ste not in STES:
            raise ValueError(f"unknown ste {self.ste!r}; valid: {', '.join(STES)}")
        if self.ste == "clip" and self.clip is None:
            raise ValueError("ste='clip' needs a clip value (e.g. 2.5)")
        if self.ste == "identity" and self.clip is not None:
            raise ValueError("ste='identity' needs clip=None (clamping without the gradient mask is not a "
                             "protocol of any of the papers)")
        if self.method == "learned_twn" and self.clip is not None:
            raise ValueError("weight method 'learned_twn' takes no clip: use clip=None, ste='identity'")

    def describe(self) -> str:
        """Short label, e.g. ``twn/W2/tensor/clip2.5``."""
        gran = f"group{self.group_size}" if self.granularity == "group" else self.granularity
        tail = f"clip{self.clip:g}" if self.clip is not None else "identity"
        return f"{self.method}/W{self.bits}/{gran}/{tail}"


@dataclass(frozen=True)
class EmbeddingSpec:
    """Quantization of ``nn.Embedding`` modules whose name matches ``pattern`` (re.search).

    Default: per-row TWN of the word embedding with clip 2.5 and the clip-masked STE (SPEC §2.1).
    """

    pattern: str = r"word_embeddings$"
    weight: WeightSpec = field(default_factory=lambda: WeightSpec(granularity="row"))

    def __post_init__(self):
        re.compile(self.pattern)
        if self.weight.method == "learned_twn":
            raise ValueError("weight method 'learned_twn' is for Linear/Conv1D only, not embeddings")


@dataclass(frozen=True)
class QuantSpec:
    """Which modules get quantized and how (SPEC §2.3, §2.4, §3).

    include / exclude: regex patterns, ``re.search`` on the qualified module name; a Linear/Conv1D is
    quantized if it matches some include and no exclude pattern. skip_last_module: also leave the last
    module of ``model.named_modules()`` FP (TSLD quirk, SPEC §2.4). act_bits / act_clip: the symmetric
    activation quantizer (SPEC §3.1; ``act_bits=None`` = A16, no activation quantization); it is applied
    to the input of every quantized Linear when ``linear_act`` is true, and the attention-internal A8
    (Q, K, V, probabilities; read by the capture module) uses the same two fields. conv1d_rows: for
    GPT-2 ``Conv1D`` (weight ``[in, out]``), "output" = one scale per output channel (like Linear),
    "official" = TSLD's per-``[in]``-row behaviour (SPEC §9.23).
    """

    name: str = "custom"
    weight: WeightSpec = field(default_factory=WeightSpec)
    act_bits: int | None = None
    act_clip: float | None = 2.5
    linear_act: bool = True
    include: tuple[str, ...] = (r".",)
    exclude: tuple[str, ...] = ()
    skip_last_module: bool = False
    embedding: EmbeddingSpec | None = None
    conv1d_rows: str = "output"

    def __post_init__(self):
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        for p in self.include + self.exclude:
            re.compile(p)
        if self.act_bits is not None and not 2 <= self.act_bits <= 16:
            raise ValueError(f"activation quantizer 'sym' does not support bits={self.act_bits}; supported: 2..16")
        if self.conv1d_rows not in CONV1D_ROWS:
            raise ValueError(f"unknown conv1d_rows {self.conv1d_rows!r}; valid: {', '.join(CONV1D_ROWS)}")

    @property
    def linear_act_bits(self) -> int | None:
        """Bit-width of the Linear-input quantizer, or None when Linear inputs stay FP."""
        return self.act_bits if self.linear_act else None

    def override(self, **kw) -> "QuantSpec":
        """Copy with fields replaced; weight-spec keys (method, bits, granularity, group_size,
        threshold, clip, ste, init_scale) go to ``weight``, the others to the top level."""
        wkeys = {f.name for f in dataclasses.fields(WeightSpec)}
        tkeys = {f.name for f in dataclasses.fields(QuantSpec)}
        unknown = sorted(set(kw) - wkeys - tkeys)
        if unknown:
            raise ValueError(f"unknown QuantSpec override(s) {unknown}; valid: {sorted(wkeys | tkeys)}")
        wkw = {k: v for k, v in kw.items() if k in wkeys}
        top = {k: v for k, v in kw.items() if k in tkeys}
        if wkw:
            top["weight"] = dataclasses.replace(top.get("weight", self.weight), **wkw)
        return dataclasses.replace(self, **top)

    def to_dict(self) -> dict:
        """Plain nested dict (for run records)."""
        return dataclasses.asdict(self)
