"""Evaluation of attribution methods: the metric suite, the evaluation LightningModule and ``evaluate.py``.

* :mod:`~explainer.evaluation.suite`: one table of metric specs (what each metric reads, how it is built,
  which keys become rows), shared with the validation callbacks;
* :mod:`~explainer.evaluation.module`: :class:`AttributionEvaluation`, one method crossed with the suite,
  run by ``Trainer.test`` on streamed, unpadded shards of the test split
  (:mod:`~explainer.evaluation.states`: the sampler and the sum states it synchronises);
* :mod:`~explainer.evaluation.plan`: method variants (layers, smoothing) and options;
* :mod:`~explainer.evaluation.runner`: the one loop over methods (results after every method, figures,
  loggers); :mod:`~explainer.evaluation.results` and :mod:`~explainer.evaluation.figures`: files;
* :mod:`~explainer.evaluation.cli`: ``evaluate.py``.
"""

from explainer.evaluation.module import AttributionEvaluation
from explainer.evaluation.plan import MethodRun, expand_methods, make_plan, parse_methods
from explainer.evaluation.results import previous_rows, results_table, write_results
from explainer.evaluation.runner import Outcome, evaluate_plan
from explainer.evaluation.states import BatchMoments, KeptMaps, ShardedBatches, Totals
from explainer.evaluation.suite import (
    METRIC_GROUPS,
    SPECS,
    EvaluationSettings,
    MetricSpec,
    build_suite,
    parse_metrics,
)

__all__ = [
    "METRIC_GROUPS",
    "SPECS",
    "AttributionEvaluation",
    "BatchMoments",
    "EvaluationSettings",
    "KeptMaps",
    "MethodRun",
    "MetricSpec",
    "Outcome",
    "ShardedBatches",
    "Totals",
    "build_suite",
    "evaluate_plan",
    "expand_methods",
    "make_plan",
    "parse_methods",
    "parse_metrics",
    "previous_rows",
    "results_table",
    "write_results",
]
