"""Post-training quantization baselines for decoders, as fake quantization (SPEC §7.8, §2.4).

OPTQ/GPTQ (:mod:`kdqat.ptq.gptq`) and AWQ (:mod:`kdqat.ptq.awq`) are implemented here from the
papers: no maintained library runs on CPU with the pinned stack (gptqmodel needs torch ≥ 2.14.1,
llmcompressor transformers ≤ 5.17, auto-gptq/AutoAWQ are CUDA-only and archived/deprecated, and
optimum's GPTQ delegates to gptqmodel). This module holds what both share:

* the weight grid: ``bits``-bit per output channel (rows of the ``[out, in]`` weight), or per
  group of ``group_size`` consecutive input columns. Asymmetric = SPEC §2.4's min–max grid with
  zero point (:func:`kdqat.quant.functions.asym_values`, ≤ 2^bits levels per row/group);
  symmetric = GPTQ's grid ``scale = 2·max|w|/(2^b−1)``, ``zero = 2^(b−1)``;
* layer discovery: the decoder blocks (the ``ModuleList`` of ``config.num_hidden_layers``
  blocks) and, inside each, every ``nn.Linear`` / GPT-2 ``Conv1D`` (``lm_head``, embeddings and
  norms are never touched). ``Conv1D`` weights ``[in, out]`` are handled as their transpose, so
  "per channel" is per *output* channel for every family;
* block-by-block calibration: the inputs of block 0 are captured with a forward pre-hook (the
  model is stopped there), each block is then run on its captured inputs with forward hooks on
  its linears, and its outputs become the next block's inputs.

Weights are written back in place (model dtype) as de-quantized values.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kdqat.quant.functions import asym_values, rows_view

# ----------------------------------------------------------------------------------- grid


def grid_params(w2d: torch.Tensor, bits: int, sym: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(scale, zero)`` ``[rows, 1]`` of the weight grid (module docstring).

    Asymmetric: the same operations as ``asym_values`` (SPEC §2.4), so that
    ``quantize_to_grid(w, *grid_params(w))`` equals it bit for bit.
    """
    qmax = 2**bits - 1
    if sym:
        m = w2d.abs().amax(dim=1, keepdim=True)
        scale = (2 * m).clamp(min=1e-5) / qmax
        return scale, torch.full_like(scale, float(2 ** (bits - 1)))
    lo = w2d.amin(dim=1, keepdim=True)
    hi = w2d.amax(dim=1, keepdim=True)
    scale = (hi - lo).clamp(min=1e-5) / qmax
    return scale, torch.clamp(-torch.round(lo / scale), 0, qmax)


def quantize_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """``(clamp(round(w/scale) + zero, 0, 2^b−1) − zero)·scale`` (broadcast over the last dim)."""
    return (torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1) - zero) * scale


def rtn(w: torch.Tensor, bits: int = 4, group_size: int = -1, sym: bool = False) -> torch.Tensor:
    """Round-to-nearest fake quantization of a ``[out, in]`` weight (per row, or per input group)."""
    check_group(w.shape[1], group_size)
    v = rows_view(w, "group", group_size) if group_size > 0 else rows_view(w, "row")
    if not sym:
        return asym_values(v, bits).reshape(w.shape)
    return quantize_to_grid(v, *grid_params(v, bits, True), bits).reshape(w.shape)


def check_group(n_in: int, group_size: int) -> None:
    if group_size > 0 and n_in % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {n_in} input columns")


def relative_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """``tr((W−Q)H(W−Q)ᵀ) / tr(WHWᵀ)`` = ``‖(W−Q)X‖² / ‖WX‖²`` for ``H ∝ XᵀX`` ``[in, in]``."""
    d = (w - q).float()
    num = float(((d @ h) * d).sum())
    den = float(((w.float() @ h) * w.float()).sum())
    return num / den if den > 0 else 0.0


# ----------------------------------------------------------------------------------- layers


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(name, blocks)``: the first ``ModuleList`` of ``config.num_hidden_layers`` modules."""
    n = model.config.num_hidden_layers
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == n:
            return name, m
    raise ValueError(f"no ModuleList of {n} decoder blocks in {type(model).__name__}")


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the ``nn.Linear`` / ``Conv1D`` layers of a block, in forward order."""
    return {n: m for n, m in block.named_modules()
            if isinstance(m, (nn.Linear, Conv1D)) and "lm_head" not in n}


def n_inputs(m: nn.Module) -> int:
    """Input features of a block linear (``Conv1D`` weight is ``[in, out]``)."""
    return m.weight.shape[0] if isinstance(m, Conv1D) else m.weight.shape[1]


def get_weight(m: nn.Module) -> torch.Tensor:
    """fp32 copy of the weight as ``[out, in]`` (``Conv1D`` stores ``[in, out]``)."""
    w = m.weight.detach()
    return (w.t() if isinstance(m, Conv1D) else w).float().clone()


def set_weight(m: nn.Module, w: torch.Tensor) -> None:
    """Write a ``[out, in]`` weight back in the module's layout and dtype."""
    with torch.no_grad():
        m.weight.copy_(w.t() if isinstance(m, Conv1D) else w)


# ----------------------------------------------------------------------------------- calibration


class _Stop(Exception):
    pass


def _as_inputs(batch, device) -> dict:
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def capture_block_inputs(model: nn.Module, calib_batches: Iterable) -> list[tuple[tuple, dict]]:
    """``[(args, kwargs)]`` with which the model calls block 0, one entry per calibration batch.

    ``calib_batches``: LongTensors ``[B, T]`` of input ids, or dicts with ``input_ids`` (and
    optionally ``attention_mask``). ``args[0]`` is the hidden state ``[B, T, D]``.
    """
    _, blocks = decoder_blocks(model)
    device = next(model.parameters()).device
    records: list[tuple[tuple, dict]] = []

    def hook(_m, args, kwargs):
        records.append((tuple(args), dict(kwargs)))
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in calib_batches:
                try:
                    model(**_as_inputs(batch, device), use_cache=False)
                except _Stop:
                    pass
    finally:
        handle.remove()
    if not records:
        raise ValueError("no calibration batches")
    return records


def run_block(block: nn.Module, records: list, hidden: list[torch.Tensor],
              taps: dict[nn.Module, Callable[[torch.Tensor], None]] | None = None) -> list[torch.Tensor]:
    """Run ``block`` on every captured call with ``hidden[i]`` as hidden state; return its outputs.

    ``taps``: module → callback receiving that module's input reshaped ``[tokens, in]``.
    """
    handles = [m.register_forward_hook(lambda _m, inp, _o, f=f: f(inp[0].detach().reshape(-1, inp[0].shape[-1])))
               for m, f in (taps or {}).items()]
    outs = []
    try:
        with torch.no_grad():
            for (args, kwargs), h in zip(records, hidden):
                out = block(h, *args[1:], **kwargs) if args else block(**{**kwargs, "hidden_states": h})
                outs.append(out[0] if isinstance(out, tuple) else out)
    finally:
        for handle in handles:
            handle.remove()
    return outs


def for_each_block(model: nn.Module, calib_batches: Iterable,
                   fn: Callable[[str, nn.Module, list, list], list[torch.Tensor]]) -> None:
    """Sequential calibration driver: ``hidden = fn(prefix, block, records, hidden)`` per block,
    where ``fn`` quantizes the block and returns the hidden states to feed the next one."""
    prefix, blocks = decoder_blocks(model)
    was_training = model.training
    model.eval()
    try:
        records = capture_block_inputs(model, calib_batches)
        hidden = [args[0] if args else kwargs["hidden_states"] for args, kwargs in records]
        for i, block in enumerate(blocks):
            hidden = fn(f"{prefix}.{i}", block, records, hidden)
    finally:
        model.train(was_training)


def rtn_quantize_model(model: nn.Module, bits: int = 4, group_size: int = -1, sym: bool = False) -> dict:
    """RTN baseline: every block linear replaced by :func:`rtn` of its weight (no calibration)."""
    prefix, blocks = decoder_blocks(model)
    names = []
    for i, block in enumerate(blocks):
        for name, m in block_linears(block).items():
            set_weight(m, rtn(get_weight(m), bits, group_size, sym))
            names.append(f"{prefix}.{i}.{name}")
    return {"method": "rtn", "bits": bits, "group_size": group_size, "sym": sym, "layers": {n: {} for n in names}}


from kdqat.ptq.awq import awq_quantize_model, awq_quantize_weight  # noqa: E402  (use the helpers above)
from kdqat.ptq.gptq import gptq_quantize_model, gptq_quantize_weight  # noqa: E402

__all__ = ["grid_params", "quantize_to_grid", "rtn", "relative_error", "decoder_blocks", "block_linears", "n_inputs",
           "get_weight", "set_weight", "capture_block_inputs", "run_block", "for_each_block",
           "rtn_quantize_model", "gptq_quantize_model", "gptq_quantize_weight", "awq_quantize_model",
           "awq_quantize_weight"]
