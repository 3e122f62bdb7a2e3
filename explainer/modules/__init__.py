"""LightningModules of the project."""

from explainer.modules.classifier import ClassifierModule

__all__ = ["ClassifierModule"]
