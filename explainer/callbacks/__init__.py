"""Callbacks: attribution metrics during validation/test, image panels, export."""

from explainer.callbacks.explainer_callbacks import ExplainerMetrics, ExportExplainer, MaskPanel
from explainer.callbacks.images import PredictionPanel
from explainer.resume import ReproducibleResume
from explainer.viz import log_figure

__all__ = ["ExplainerMetrics", "ExportExplainer", "MaskPanel", "PredictionPanel", "ReproducibleResume", "log_figure"]
