"""GLUE's metrics as a local `evaluate` module, offline:
`evaluate.load(cmift.data.metrics.GLUE_METRIC, "mrpc")` answers like the hub's
`evaluate.load("glue", "mrpc")` (the same config names and result keys), with the numbers
cmift's runs report (cmift.data.metrics: scikit-learn and scipy). `evaluate` copies this file
into its module cache, so it imports cmift rather than a sibling file."""

import datasets
import evaluate

from cmift.data.metrics import GLUE_CONFIGS, task_metrics


class GlueMetric(evaluate.Metric):
    def _info(self):
        if self.config_name not in GLUE_CONFIGS:
            raise KeyError(f"config {self.config_name!r} is not allowed: one of "
                           f"{', '.join(GLUE_CONFIGS)}")
        kind = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description="GLUE metrics (local: scikit-learn and scipy, as cmift reports them)",
            citation="Wang et al., GLUE: a multi-task benchmark and analysis platform for "
                     "natural language understanding, ICLR 2019",
            inputs_description="predictions, references: class ids (stsb: similarity scores)",
            features=datasets.Features({"predictions": datasets.Value(kind),
                                        "references": datasets.Value(kind)}))

    def _compute(self, predictions, references):
        return task_metrics(GLUE_CONFIGS[self.config_name], predictions, references)
