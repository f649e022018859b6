"""Local evaluate metric ``pearsonr``: Pearson correlation (scipy.stats.pearsonr).

Inputs: predictions [N], references [N] (float64). Output: {"pearsonr": float in the unit range, not x100}.
"""
import datasets
import evaluate
from scipy.stats import pearsonr


class Pearsonr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Pearson correlation (scipy.stats.pearsonr).",
            citation="",
            inputs_description="predictions [N], references [N] (float64)",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"pearsonr": float(pearsonr(references, predictions)[0])}
