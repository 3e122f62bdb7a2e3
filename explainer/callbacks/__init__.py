"""Callbacks: attribution metrics during validation/test, image panels, export."""

from explainer.callbacks.explainer import ExplainerMetrics, ExportExplainer, MaskPanel
from explainer.callbacks.images import PredictionPanel, log_figure
from explainer.resume import ReproducibleResume

__all__ = ["ExplainerMetrics", "ExportExplainer", "MaskPanel", "PredictionPanel", "ReproducibleResume", "log_figure"]
