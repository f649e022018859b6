"""Non-linearity approximation rows (registry role "approx"): NN-LUT (NNLUT.md §1.3, §1.6) and
I-BERT (NNLUT.md §3) swapped into the fine-tuned full-precision model of the cell, no training.

The job's teacher (the FP fine-tune of model × task) is loaded, frozen (eval mode, no gradients),
its GELU / softmax / LayerNorm (``params.ops``) are replaced in place (``kdqat.nnlut.ops``:
``swap_nonlinearities`` for "nnlut", ``swap_ibert`` for "ibert"; softmax through
``kdqat.capture.Capture(model, softmax_fn=...)``), NN-LUT tables are optionally calibrated
(``kdqat.nnlut.calibrate``, §1.6 target (a): each table refitted on the inputs it sees, model
frozen) and the model is scored on dev exactly like the teacher (``make_eval_fn``; same data
settings: the job takes its teacher's ``batch_size``/``max_len``/``max_*_examples``,
``runners.job.recipe_config``).

Parameters (``validate_params`` fills the defaults; they are part of the job hash):

* both methods: ``ops`` ⊆ ["gelu", "softmax", "layernorm"] (default all three; stored in that order);
* "nnlut": ``entries`` 16 | 32 (cached tables), ``table_set`` "paper" | "narrow"
  (``kdqat.nnlut.ops.TABLE_SETS``), ``calibrate`` (default false) and, only with calibration,
  ``calib_fraction`` (default 0.1: the paper's tenth of the training data), ``calib_epochs``
  (default 5, the paper's), ``calib_lr`` (default 1e-4, ours: the paper gives none);
* "ibert": ``ln_bits`` (default 22, I-BERT's LayerNorm input width).

Calibration data: ⌈calib_fraction·N⌉ training rows drawn without replacement with the job's seed,
in batches of the teacher's ``batch_size``, labels unused. From each table call at most
``per_call = clamp(2^20 // n_batches, 64, 4096)`` inputs are kept (≈ 1M samples per GELU /
LayerNorm table, whatever the task size).

Result (the shape of ``kdqat.train.train``'s): best = last = the one dev evaluation (step 0),
``steps`` 0, and ``quant_report`` = {"method", "params", "swapped": [module names], "fp": the
unswapped model's dev metrics, "probe": {"examples", "logit_max_abs", "logit_mean_abs",
"agreement"} (|logits − FP logits| over the first ≤ 256 dev examples [n, C], and the fraction of
equal argmax), "calibration": {site: errors before/after} or None}.
"""
from __future__ import annotations

import contextlib
import math
import time
import torch

OPS = ("gelu", "softmax", "layernorm")
DEFAULTS = {"nnlut": {"ops": list(OPS), "entries": 16, "table_set": "paper", "calibrate": False},
            "ibert": {"ops": list(OPS), "ln_bits": 22}}
CALIB_DEFAULTS = {"calib_fraction": 0.1, "calib_epochs": 5, "calib_lr": 1e-4}
ENTRIES = (16, 32)
PROBE = 256


def validate_params(method: str, params: dict) -> dict:
    """The parameters of an approx row with defaults filled (module docstring); ValueError naming
    the parameter (``parameter 'x'``) otherwise."""
    if method not in DEFAULTS:
        raise ValueError(f"unknown approximation method {method!r}; valid: {', '.join(DEFAULTS)}")
    allowed = set(DEFAULTS[method]) | (set(CALIB_DEFAULTS) if method == "nnlut" else set())
    bad = sorted(set(params) - allowed)
    if bad:
        raise ValueError(f"approx method {method!r}: unknown parameter '{bad[0]}'; valid: {', '.join(sorted(allowed))}")
    p = {**DEFAULTS[method], **params}
    ops = p["ops"]
    if not isinstance(ops, list) or not ops or len(set(ops)) != len(ops) or set(ops) - set(OPS):
        raise ValueError(f"parameter 'ops' must be a non-empty list of distinct names from {list(OPS)}, got {ops!r}")
    p["ops"] = [o for o in OPS if o in ops]
    if method == "ibert":
        if not isinstance(p["ln_bits"], int) or not 2 <= p["ln_bits"] <= 31:
            raise ValueError(f"parameter 'ln_bits' must be an integer in [2, 31], got {p['ln_bits']!r}")
        return p
    from kdqat.nnlut.ops import TABLE_SETS
    if p["entries"] not in ENTRIES:
        raise ValueError(f"parameter 'entries' must be one of {list(ENTRIES)} (cached tables), got {p['entries']!r}")
    if p["table_set"] not in TABLE_SETS:
        raise ValueError(f"parameter 'table_set' must be one of {list(TABLE_SETS)}, got {p['table_set']!r}")
    if not isinstance(p["calibrate"], bool):
        raise ValueError(f"parameter 'calibrate' must be true or false, got {p['calibrate']!r}")
    given = sorted(set(params) & set(CALIB_DEFAULTS))
    if not p["calibrate"]:
        if given:
            raise ValueError(f"parameter '{given[0]}' is only used with calibrate = true")
        return p
    p = {**p, **CALIB_DEFAULTS, **{k: params[k] for k in given}}
    if not 0 < p["calib_fraction"] <= 1:
        raise ValueError(f"parameter 'calib_fraction' must be in (0, 1], got {p['calib_fraction']!r}")
    if not isinstance(p["calib_epochs"], int) or p["calib_epochs"] < 1:
        raise ValueError(f"parameter 'calib_epochs' must be a positive integer, got {p['calib_epochs']!r}")
    if not p["calib_lr"] > 0:
        raise ValueError(f"parameter 'calib_lr' must be > 0, got {p['calib_lr']!r}")
    return p


def swap(model, method: str, params: dict):
    """Swap ``params["ops"]`` of ``model`` in place; the ``LutSwap`` handle (``restore()`` undoes it)."""
    from kdqat.nnlut.ops import swap_ibert, swap_nonlinearities
    if method == "ibert":
        return swap_ibert(model, params["ops"], params["ln_bits"])
    return swap_nonlinearities(model, params["ops"], entries=params["entries"], table_set=params["table_set"])


def calibration_batches(train: dict, fraction: float, batch_size: int, seed: int) -> list[dict]:
    """⌈fraction·N⌉ rows of ``train`` (dict of [N, ...] tensors) drawn without replacement with
    ``seed``, in their drawn order, as model-input batches of ``batch_size`` (labels dropped)."""
    from kdqat.recipes.data import model_inputs
    n = train["input_ids"].shape[0]
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:math.ceil(fraction * n)]
    idx = idx.to(train["input_ids"].device)
    return [model_inputs({k: v[idx[i:i + batch_size]] for k, v in train.items()})
            for i in range(0, idx.numel(), batch_size)]


def run_approx(cfg: dict, model, tokenizer, device: str = "cpu", on_log=None) -> dict:
    """Swap, optionally calibrate and evaluate the FP ``model`` (already on ``device``; the task
    data is moved there) for the approx job ``cfg``; the result dict of the module docstring."""
    from kdqat.capture import Capture
    from kdqat.data.tasks import get_task
    from kdqat.nnlut.calibrate import calibrate
    from kdqat.recipes.data import encoder_data
    from kdqat.recipes.encoder import make_eval_fn, predict

    t0 = time.perf_counter()
    method, seed = cfg["method"], int(cfg["seed"])
    params = validate_params(method, dict(cfg.get("params") or {}))
    task = get_task(cfg["task"])
    data = encoder_data(task, tokenizer, cfg.get("train") or {}, seed, device)
    model.eval().requires_grad_(False)
    evaluate = make_eval_fn(model, task, data["dev"])
    probe = {k: v[:PROBE] for k, v in data["dev"][0].items()}
    with torch.no_grad():
        fp, z_fp = evaluate(), predict(model, probe)
    handle = swap(model, method, params)
    for mod in [*handle.swapped.values(), handle.softmax_fn]:
        if mod is not None:
            mod.to(device)
    ctx = Capture(model, softmax_fn=handle.softmax_fn) if handle.softmax_fn is not None else contextlib.nullcontext()
    cal = None
    try:
        with ctx, torch.no_grad():
            if params.get("calibrate"):
                bs = int((cfg.get("train") or {}).get("batch_size") or task.batch_size)
                batches = calibration_batches(data["train"], params["calib_fraction"], bs, seed)
                per_call = max(64, min(4096, 2**20 // max(1, len(batches))))
                cal = calibrate(handle, batches, run=lambda b: model(**b), epochs=params["calib_epochs"],
                                lr=params["calib_lr"], per_call=per_call, seed=seed)
                if on_log:
                    on_log("calibrate", 0, {"sites": len(cal)})
            metrics, z = evaluate(), predict(model, probe)
    finally:
        handle.restore()
    diff = (z - z_fp).abs()
    agree = z.argmax(-1) == z_fp.argmax(-1) if task.kind != "regression" else torch.ones(0, dtype=torch.bool)
    metrics = {"step": 0, **metrics}
    report = {"method": method, "params": params, "swapped": sorted(handle.swapped), "fp": fp,
              "probe": {"examples": int(z.shape[0]), "logit_max_abs": float(diff.max()),
                        "logit_mean_abs": float(diff.mean()),
                        "agreement": float(agree.float().mean()) if agree.numel() else None},
              "calibration": cal}
    return {"best": metrics, "last": dict(metrics), "curves": {"train_loss": [], "eval": [(0, dict(metrics))]},
            "steps": 0, "resumed_from": None, "quant_report": report, "wall_s": time.perf_counter() - t0}
