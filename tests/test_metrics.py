"""Classification metrics (SPEC §6.4) against values worked out by hand on tiny arrays."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdqat.data.tasks import get_task
from kdqat.evaluation import compute_metrics, merge_dev_metrics, score
from kdqat.metrics import metric_path

# binary confusion used below: preds vs labels -> TP=2 (0,3), FP=1 (1), TN=1 (2), FN=1 (4)
P = [1, 1, 0, 1, 0]
Y = [1, 0, 0, 1, 1]


def test_accuracy_from_logits_tensor():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])  # argmax 0,1,0,1
    m = compute_metrics(get_task("sst2"), logits, torch.tensor([0, 1, 1, 1]))
    assert m == {"acc": 75.0}
    assert score(get_task("sst2"), m) == (75.0, 75.0)


def test_mrpc_acc_f1_selects_on_acc_reports_mean():
    task = get_task("mrpc")
    m = compute_metrics(task, np.array(P), Y)
    # acc = 3/5; precision = recall = 2/3 -> F1 = 2/3
    assert m["acc"] == pytest.approx(60.0, abs=1e-12)
    assert m["f1"] == pytest.approx(200 / 3, abs=1e-12)
    assert m["acc_f1"] == pytest.approx((60 + 200 / 3) / 2, abs=1e-12)
    sel, rep = score(task, m)
    assert sel == pytest.approx(60.0) and rep == pytest.approx(190 / 3)


def test_matthews_correlation_by_hand():
    task = get_task("cola")
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert compute_metrics(task, P, Y) == {"mcc": pytest.approx(100 / 6, abs=1e-12)}
    # TP=3, TN=3, FP=1, FN=1 -> (9 - 1) / sqrt(4^4) = 0.5
    assert compute_metrics(task, [1, 1, 1, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0, 0, 1])["mcc"] == pytest.approx(50.0)
    # constant predictions: undefined denominator, sklearn convention 0
    assert compute_metrics(task, [1, 1, 1, 1], [1, 0, 1, 0])["mcc"] == 0.0


def test_stsb_pearson_spearman_corr():
    task = get_task("stsb")
    preds = torch.tensor([[1.0], [2.0], [3.0], [10.0]])  # [N, 1] regression head output
    labels = [1.0, 3.0, 2.0, 4.0]
    m = compute_metrics(task, preds, labels)
    # pearson: dx = (-3,-2,-1,6), dy = (-1.5,.5,-.5,1.5): 13 / sqrt(50 * 5)
    assert m["pearson"] == pytest.approx(100 * 13 / math.sqrt(250), abs=1e-9)
    # spearman: ranks (1,2,3,4) vs (1,3,2,4): 1 - 6*(0+1+1+0)/(4*15) = 0.8
    assert m["spearman"] == pytest.approx(80.0, abs=1e-9)
    assert m["corr"] == pytest.approx((100 * 13 / math.sqrt(250) + 80) / 2, abs=1e-9)
    assert score(task, m) == (m["corr"], m["corr"])


def test_klue_tc_accuracy_and_macro_f1():
    task = get_task("klue_tc")
    m = compute_metrics(task, [0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2])
    # per-class F1: c0 P=1/2 R=1/2 -> 1/2; c1 P=2/3 R=1 -> 4/5; c2 P=1 R=1/2 -> 2/3
    assert m["acc"] == pytest.approx(400 / 6)
    assert m["f1_macro"] == pytest.approx(100 * (0.5 + 0.8 + 2 / 3) / 3, abs=1e-9)
    assert score(task, m) == (pytest.approx(400 / 6), pytest.approx(400 / 6))


def test_mnli_merge_selects_matched():
    task = get_task("mnli")
    m = compute_metrics(task, [0, 1, 2, 2], [0, 1, 2, 0])
    mm = compute_metrics(task, [0, 0, 2, 1, 1], [0, 1, 2, 1, 0])
    merged = merge_dev_metrics(task, {"validation_matched": m, "validation_mismatched": mm})
    assert merged == {"acc": 75.0, "mm_acc": 60.0}
    assert score(task, merged) == (75.0, 75.0)
    with pytest.raises(ValueError, match="validation_mismatched"):
        merge_dev_metrics(task, {"validation_matched": m})


def test_errors():
    with pytest.raises(ValueError, match="not a classification metric set"):
        compute_metrics(get_task("ptb"), [1.0], [1.0])
    with pytest.raises(ValueError, match="3 predictions vs 2 labels"):
        compute_metrics(get_task("rte"), [0, 1, 1], [0, 1])
    with pytest.raises(KeyError, match="acc_f1"):
        score(get_task("qqp"), {"acc": 1.0})
    with pytest.raises(ValueError, match="unknown local metric"):
        metric_path("glue")


def test_local_module_loads_with_evaluate():
    import evaluate

    f1 = evaluate.load(metric_path("f1"))
    assert f1.compute(predictions=P, references=Y) == {"f1": pytest.approx(2 / 3)}
    assert f1.compute(predictions=P, references=Y, pos_label=0) == {"f1": pytest.approx(0.5)}
