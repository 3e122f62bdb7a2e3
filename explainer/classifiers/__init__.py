"""Classifiers (Explananda): the factory, the frozen wrapper and the grid-protocol wrappers."""

from explainer.classifiers.factory import ClassifierNet, build_classifier, digitnet, digitnet_local
from explainer.classifiers.frozen import FrozenClassifier, state_hash
from explainer.classifiers.protocols import PROTOCOLS, DiFullNet, DiPartNet, GridPGNet, wrap_for_protocol
from explainer.trust import UntrustedFactoryError, loading_from, register_backbone

__all__ = [
    "PROTOCOLS", "ClassifierNet", "DiFullNet", "DiPartNet", "FrozenClassifier", "GridPGNet", "UntrustedFactoryError",
    "build_classifier", "digitnet", "digitnet_local", "loading_from", "register_backbone", "state_hash",
    "wrap_for_protocol",
]
