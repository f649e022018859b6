"""Post-training quantization rows of the TSLD tables (SPEC §7.8, §8.3; role "ptq" of the registry).

The full-precision fine-tuned model (the job's teacher) is loaded in the protocol's precision and
quantized in place with W4 fake quantization, then scored exactly like a QAT student at its first
evaluation (same task data, same ``evaluate`` and, for instruction tasks, the same lm-eval step):

* ``optq``: :func:`kdqat.ptq.gptq_quantize_model` with HF ``GPTQConfig``'s defaults, the
  configuration P3's OPTQ row ran through (SPEC §7.8): symmetric grid, ``damp = 0.1``,
  ``true_sequential = True``, no activation reordering;
* ``awq``: :func:`kdqat.ptq.awq_quantize_model`, asymmetric grid with zero point (llm-awq
  ``zero_point=True``, SPEC §7.8), α grid of 20.

Parameters (registry ``params``): ``bits`` (default 4), ``group_size`` (default −1 = one scale per
output channel, the tables' "channel-wise" PTQ, SPEC §12.6), ``calib_examples`` (default 128): the
first ``calib_examples`` training blocks (LM tasks) or training examples (instruction / lm_cls
tasks; one example per calibration batch, so no padding enters the statistics) in dataset order.
The record has no training curve; ``steps`` is 0 and ``best`` = ``last`` = the one evaluation.
"""
from __future__ import annotations

import time

DEFAULTS = {"bits": 4, "group_size": -1, "calib_examples": 128}
OPTQ_HF = {"sym": True, "damp": 0.1, "true_sequential": True}   # HF GPTQConfig defaults
AWQ_REF = {"sym": False, "n_grid": 20}                            # llm-awq zero_point=True


def calibration_batches(train: dict, n: int, block_batch: int = 4) -> list:
    """The first ``n`` rows of the loop data: LongTensor ``[≤block_batch, T]`` batches of blocks,
    or one ``{"input_ids", "attention_mask"}`` ``[1, len]`` batch per (unpadded) example."""
    ids = train["input_ids"][:n]
    if "attention_mask" not in train:
        return [ids[i:i + block_batch] for i in range(0, ids.shape[0], block_batch)]
    lens = train["attention_mask"][:n].sum(1).tolist()
    return [{"input_ids": ids[i:i + 1, :int(k)], "attention_mask": train["attention_mask"][i:i + 1, :int(k)]}
            for i, k in enumerate(lens)]


def quantize(model, method: str, params: dict, calib: list) -> dict:
    """Apply ``method`` ("optq" | "awq") with ``params`` (bits, group_size) in place; its report."""
    from kdqat.ptq import awq_quantize_model, gptq_quantize_model
    p = {**DEFAULTS, **params}
    if method == "optq":
        return gptq_quantize_model(model, calib, p["bits"], p["group_size"], **OPTQ_HF)
    if method == "awq":
        return awq_quantize_model(model, calib, p["bits"], p["group_size"], **AWQ_REF)
    raise ValueError(f"unknown PTQ method {method!r}; valid: optq, awq")


def run_ptq(cfg: dict, teacher_dir, device: str, dtype, data, attn_implementation: str = "sdpa") -> dict:
    """Quantize the teacher of ``cfg`` and evaluate it on ``data`` (a ``TaskData``); the result dict
    has the shape of :func:`kdqat.train.train`'s plus ``quant_report``."""
    from transformers import AutoModelForCausalLM
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, attn_implementation=attn_implementation,
                                                 dtype=dtype).to(device)
    model.eval().requires_grad_(False)
    p = {**DEFAULTS, **(cfg.get("params") or {})}
    calib = calibration_batches({k: v.to(device) for k, v in data.train.items()}, int(p["calib_examples"]))
    report = quantize(model, cfg["method"], p, calib)
    metrics = {"step": 0, **data.evaluate(model)}
    return {"best": metrics, "last": dict(metrics), "curves": {"train_loss": [], "eval": [(0, dict(metrics))]},
            "steps": 0, "resumed_from": None, "quant_report": {"params": p, **report}, "model": model,
            "wall_s": time.perf_counter() - t0}
