"""Classification / regression scoring for encoder tasks (SPEC §6.4, §12.4).

``compute_metrics`` turns predictions of one dev split into the metric set named by
``TaskSpec.metric``, every value x100 (the official ``utils_glue.py`` numbers x100):

  acc      = 100 * mean(pred == label)
  f1       = 100 * binary F1 of class 1 (sklearn ``f1_score``, as GLUE MRPC/QQP)
  acc_f1   = (acc + f1) / 2
  f1_macro = 100 * unweighted mean of per-class F1 (KLUE-TC, recorded only)
  mcc      = 100 * Matthews correlation (CoLA)
  pearson, spearman = 100 * correlation of the regression outputs; corr = (pearson + spearman) / 2

The values go through ``evaluate`` with the LOCAL metric modules of :mod:`kdqat.metrics` (which
call sklearn / scipy), so no hub access is needed. ``score`` picks (selection, report) values;
``merge_dev_metrics`` joins the dicts of several dev splits (MNLI m / mm).
Decoder metrics (perplexity, lm-eval accuracy) are not here.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import numpy as np

from kdqat.data.tasks import TaskSpec
from kdqat.metrics import metric_path

# metric set -> ordered (output key, local metric module, extra compute kwargs)
_SETS: dict[str, tuple[tuple[str, str, dict], ...]] = {
    "acc": (("acc", "accuracy", {}),),
    "acc_f1": (("acc", "accuracy", {}), ("f1", "f1", {})),
    "acc_macro_f1": (("acc", "accuracy", {}), ("f1_macro", "f1", {"average": "macro"})),
    "mcc": (("mcc", "matthews_correlation", {}),),
    "corr": (("pearson", "pearsonr", {}), ("spearman", "spearmanr", {})),
}


@lru_cache(maxsize=None)
def _load(name: str):
    import evaluate  # heavy import (~5 s cold): only when a metric is needed

    return evaluate.load(metric_path(name))


def _as_predictions(task: TaskSpec, preds) -> np.ndarray:
    """[N, C] logits -> [N] argmax class ids (classification); [N] or [N, 1] -> [N] floats (regression)."""
    p = np.asarray(preds.detach().cpu() if hasattr(preds, "detach") else preds)
    if task.kind == "regression" or task.metric == "corr":
        return p.reshape(p.shape[0]).astype(np.float64)
    if p.ndim == 2:
        p = p.argmax(axis=1)
    return p.astype(np.int64)


def compute_metrics(task: TaskSpec, preds, labels) -> dict[str, float]:
    """Metrics of one dev split, all x100 (module docstring).

    ``preds``: [N, num_labels] logits or [N] class ids (classification); [N] / [N, 1] scores
    (regression). ``labels``: [N]. Arrays, lists or tensors. Reduction: over all N examples.
    """
    if task.metric not in _SETS:
        raise ValueError(f"task {task.name}: metric {task.metric!r} is not a classification metric set")
    p = _as_predictions(task, preds)
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).reshape(-1).astype(p.dtype)
    if p.shape != y.shape:
        raise ValueError(f"task {task.name}: {p.shape[0]} predictions vs {y.shape[0]} labels")
    out: dict[str, float] = {}
    for key, module, kwargs in _SETS[task.metric]:
        value = _load(module).compute(predictions=p.tolist(), references=y.tolist(), **kwargs)
        out[key] = 100.0 * float(next(iter(value.values())))
    if task.metric == "acc_f1":
        out["acc_f1"] = (out["acc"] + out["f1"]) / 2
    if task.metric == "corr":
        out["corr"] = (out["pearson"] + out["spearman"]) / 2
    return out


def merge_dev_metrics(task: TaskSpec, per_split: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """One flat dict from ``{dev split: compute_metrics(...)}``; keys get ``task.dev_prefixes``.

    MNLI: ``{"validation_matched": {"acc": a}, "validation_mismatched": {"acc": b}}`` ->
    ``{"acc": a, "mm_acc": b}`` (selection on matched, SPEC §6.4 / §12.4).
    """
    missing = [s for s in task.dev_splits if s not in per_split]
    if missing:
        raise ValueError(f"task {task.name}: metrics missing for dev split(s) {missing}")
    return {prefix + k: v for split, prefix in zip(task.dev_splits, task.dev_prefixes)
            for k, v in per_split[split].items()}


def score(task: TaskSpec, metrics: Mapping[str, float]) -> tuple[float, float]:
    """(selection value, report value) of a metrics dict (SPEC §6.4).

    Best-dev selection compares selection values (higher is better unless
    ``task.higher_is_better`` is False); the table shows the report value at that evaluation.
    """
    for key in (task.selection_key, task.report_key):
        if key not in metrics:
            raise KeyError(f"task {task.name}: metric {key!r} missing; have {sorted(metrics)}")
    return float(metrics[task.selection_key]), float(metrics[task.report_key])
