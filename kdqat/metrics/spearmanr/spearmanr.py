"""Local evaluate metric ``spearmanr``: Spearman rank correlation (scipy.stats.spearmanr).

Inputs: predictions [N], references [N] (float64). Output: {"spearmanr": float in the unit range, not x100}.
"""
import datasets
import evaluate
from scipy.stats import spearmanr


class Spearmanr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Spearman rank correlation (scipy.stats.spearmanr).",
            citation="",
            inputs_description="predictions [N], references [N] (float64)",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"spearmanr": float(spearmanr(references, predictions)[0])}
