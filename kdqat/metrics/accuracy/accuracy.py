"""Local evaluate metric ``accuracy``: fraction of exact matches (sklearn accuracy_score).

Inputs: predictions [N], references [N] (int64). Output: {"accuracy": float in the unit range, not x100}.
"""
import datasets
import evaluate
from sklearn.metrics import accuracy_score


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="fraction of exact matches (sklearn accuracy_score).",
            citation="",
            inputs_description="predictions [N], references [N] (int64)",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"accuracy": float(accuracy_score(references, predictions))}
