"""Callbacks: attribution metrics during validation/test, image panels, export."""

from explainer.callbacks.explainer_callbacks import ExplainerMetrics, ExportExplainer, MaskPanel
from explainer.callbacks.images import PredictionPanel
from explainer.callbacks.speed import Accelerate
from explainer.resume import ReproducibleResume
from explainer.viz import log_figure

__all__ = [
    "Accelerate",
    "ExplainerMetrics",
    "ExportExplainer",
    "MaskPanel",
    "PredictionPanel",
    "ReproducibleResume",
    "log_figure",
]
