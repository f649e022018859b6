"""Local evaluate metric ``f1``: F1 (sklearn f1_score; binary pos_label=1 by default, or macro).

Inputs: predictions [N], references [N] (int64). Output: {"f1": float in the unit range, not x100}.
"""
import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="F1 (sklearn f1_score; binary with pos_label=1 by default, or macro).",
            citation="",
            inputs_description="predictions [N], references [N] (int64)",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, average="binary", pos_label=1):
        return {"f1": float(f1_score(references, predictions, average=average, pos_label=pos_label))}
