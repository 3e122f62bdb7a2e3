"""Attribution metrics: :class:`torchmetrics.Metric` subclasses with sum-reduced (DDP-safe) states."""

from explainer.metrics.common import gt_masks, gt_valid
from explainer.metrics.pointing import (
    EnergyPointingGame,
    PointingGame,
    argmax_points,
    centre_points,
    difficult_pairs,
)

__all__ = [
    "EnergyPointingGame",
    "PointingGame",
    "argmax_points",
    "centre_points",
    "difficult_pairs",
    "gt_masks",
    "gt_valid",
]
