"""Classifiers (Explananda): the factory and the frozen wrapper."""

from explainer.classifiers.factory import ClassifierNet, build_classifier, digitnet
from explainer.classifiers.frozen import FrozenClassifier, state_hash

__all__ = ["ClassifierNet", "FrozenClassifier", "build_classifier", "digitnet", "state_hash"]
