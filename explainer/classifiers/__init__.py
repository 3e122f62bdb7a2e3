"""Classifiers (Explananda): the factory, the frozen wrapper and the classifier sources (the grid-protocol
wrappers are in :mod:`explainer.protocols`)."""

from explainer.classifiers.factory import ClassifierNet, build_classifier, digitnet, digitnet_local
from explainer.classifiers.frozen import FrozenClassifier, state_hash
from explainer.trust import UntrustedFactoryError, loading_from, register_backbone

__all__ = [
    "ClassifierNet",
    "FrozenClassifier",
    "UntrustedFactoryError",
    "build_classifier",
    "digitnet",
    "digitnet_local",
    "loading_from",
    "register_backbone",
    "state_hash",
]
