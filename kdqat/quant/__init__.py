"""Weight and activation fake-quantization (SPEC §2, §3): autograd quantizers (``functions``), the
spec (``spec``), swap-in modules (``modules``), named presets and ``quantize_model`` (``presets``),
model size / compression rate (``compression``). Imports nothing else of the project.

    from kdqat.quant import quantize_model
    report = quantize_model(model, "kim2022_w2a8")            # or "tsld_w2a16", granularity="tensor"
    print(report); report.spec.act_bits, report.spec.act_clip  # attention-internal A8 settings

Import cost: ``spec`` and ``presets`` (PRESETS, resolve_spec, quantize_model, ...) load without
torch, so the registry validates presets and overrides torch-free; the torch-backed names
(``functions``, ``modules``, ``compression``) are imported on first access (PEP 562 ``__getattr__``).
"""
from __future__ import annotations

import importlib

from .presets import PRESETS, QuantReport, QuantReportRow, quantize_model, resolve_spec, select_modules
from .spec import EmbeddingSpec, QuantSpec, WeightSpec

_LAZY = {
    "compression_rate": "compression", "model_size_bits": "compression",
    "learned_scale_ternary": "functions", "quantize_activation": "functions", "quantize_weight": "functions",
    "ternary": "functions",
    "QuantEmbedding": "modules", "QuantLinear": "modules", "fake_quant": "modules",
}

__all__ = [
    "PRESETS", "EmbeddingSpec", "QuantEmbedding", "QuantLinear", "QuantReport", "QuantReportRow",
    "QuantSpec", "WeightSpec", "compression_rate", "fake_quant", "learned_scale_ternary",
    "model_size_bits", "quantize_activation", "quantize_model", "quantize_weight", "resolve_spec",
    "select_modules", "ternary",
]


def __getattr__(name: str):
    """Torch-backed public names, imported from their submodule on first access."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
