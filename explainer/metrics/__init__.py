"""Attribution metrics: :class:`torchmetrics.Metric` subclasses with sum-reduced (DDP-safe) states."""

from explainer.metrics.causal import (
    InsertionDeletion,
    insertion_deletion_curves,
    rise_blur,
    rise_blur_kernel,
    top_classes,
    trapezoid_auc,
)
from explainer.metrics.common import gt_masks, gt_valid
from explainer.metrics.pointing import (
    EnergyPointingGame,
    PointingGame,
    argmax_points,
    centre_points,
    difficult_pairs,
)
from explainer.metrics.saliency import ClassSpecificity, SaliencyMetric
from explainer.metrics.segmentation import (
    SEGMENTATION_KEYS,
    SegmentationMetrics,
    normalize_maps,
    roc_auc_per_sample,
    segmentation_scores,
)

__all__ = [
    "InsertionDeletion",
    "insertion_deletion_curves",
    "rise_blur",
    "rise_blur_kernel",
    "top_classes",
    "trapezoid_auc",
    "ClassSpecificity",
    "SaliencyMetric",
    "SEGMENTATION_KEYS",
    "SegmentationMetrics",
    "normalize_maps",
    "roc_auc_per_sample",
    "segmentation_scores",
    "EnergyPointingGame",
    "PointingGame",
    "argmax_points",
    "centre_points",
    "difficult_pairs",
    "gt_masks",
    "gt_valid",
]
