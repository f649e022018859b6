"""Weight and activation fake-quantization (SPEC §2, §3): autograd quantizers (``functions``), the
spec (``spec``), swap-in modules (``modules``), named presets and ``quantize_model`` (``presets``),
model size / compression rate (``compression``). Imports nothing else of the project.

    from kdqat.quant import quantize_model
    report = quantize_model(model, "kim2022_w2a8")            # or "tsld_w2a16", granularity="tensor"
    print(report); report.spec.act_bits, report.spec.act_clip  # attention-internal A8 settings
"""
from .compression import compression_rate, model_size_bits
from .functions import learned_scale_ternary, quantize_activation, quantize_weight, ternary
from .modules import QuantEmbedding, QuantLinear, fake_quant
from .presets import PRESETS, QuantReport, QuantReportRow, quantize_model, resolve_spec, select_modules
from .spec import EmbeddingSpec, QuantSpec, WeightSpec

__all__ = [
    "PRESETS", "EmbeddingSpec", "QuantEmbedding", "QuantLinear", "QuantReport", "QuantReportRow",
    "QuantSpec", "WeightSpec", "compression_rate", "fake_quant", "learned_scale_ternary",
    "model_size_bits", "quantize_activation", "quantize_model", "quantize_weight", "resolve_spec",
    "select_modules", "ternary",
]
