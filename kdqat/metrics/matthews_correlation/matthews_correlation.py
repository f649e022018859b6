"""Local evaluate metric ``matthews_correlation``: Matthews correlation coefficient (sklearn matthews_corrcoef).

Inputs: predictions [N], references [N] (int64). Output: {"matthews_correlation": float in the unit range, not x100}.
"""
import datasets
import evaluate
from sklearn.metrics import matthews_corrcoef


class MatthewsCorrelation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Matthews correlation coefficient (sklearn matthews_corrcoef).",
            citation="",
            inputs_description="predictions [N], references [N] (int64)",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
