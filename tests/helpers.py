"""Small models for tests (importable as ``tests.helpers:...`` by the classifier factory)."""

from __future__ import annotations

from torch import nn

from explainer.classifiers.factory import ClassifierNet


def tiny_net(num_classes: int) -> ClassifierNet:
    """A two-layer CNN with BatchNorm and dropout, for fast tests."""
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
    return ClassifierNet(features, nn.Sequential(nn.Dropout(0.5), nn.Linear(16, num_classes)), name="tiny")


def opaque_net(num_classes: int) -> nn.Module:
    """A plain nn.Module without a features/head split."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
