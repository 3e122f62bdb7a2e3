"""LightningModules of the project."""

from explainer.modules.classifier import ClassifierModule
from explainer.modules.explainer_module import ExplainerModule

__all__ = ["ClassifierModule", "ExplainerModule"]
