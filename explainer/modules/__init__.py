"""LightningModules of the project."""

from explainer.modules.classifier import ClassifierModule
from explainer.modules.explainer_module import ExplainerModule
from explainer.modules.fastshap import FastSHAPModule
from explainer.modules.learned import LearnedExplainerModule
from explainer.modules.rtsal import RealTimeSaliencyModule

__all__ = [
    "ClassifierModule",
    "ExplainerModule",
    "FastSHAPModule",
    "LearnedExplainerModule",
    "RealTimeSaliencyModule",
]
