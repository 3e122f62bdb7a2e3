"""Attribution metrics: :class:`torchmetrics.Metric` subclasses with sum-reduced (DDP-safe) states.

Every metric accumulates plain sums and counts (``dist_reduce_fx="sum"``), so it runs batched on the
device during validation, synchronises across DDP ranks, and ``merge_state`` of two metrics equals one
metric fed both halves. ``compute()`` returns a dict of scalar tensors (loggable with ``log_dict``).

Common contract of the map-based metrics
----------------------------------------

* **Maps** are ``[B, K, h, w]`` for class indices ``classes`` ``[B, K]`` (long; ``-1`` = padding, skipped),
  the output of every :class:`~explainer.methods.AttributionMethod`; build ``classes`` with
  :func:`~explainer.methods.present_classes` (label-conditioned) or :func:`top_classes` (prediction-
  conditioned, the RISE protocol). Maps may have any resolution: each metric resizes them bilinearly
  (``align_corners=False``) to what it needs: the original image size (pointing game), the batch image
  size (segmentation scores, energy pointing game, masked images).
* **Ground truth** comes from a :class:`~explainer.data.batch.Batch`: ``source="masks"`` uses
  ``batch.masks`` ``[B, C, H, W]`` where ``batch.mask_valid``; ``source="boxes"`` rasterises the union of
  the class's boxes (``(x0, y0, x1, y1)``, ``x1, y1`` exclusive, a pixel is inside when its centre is) at
  the batch image size (:func:`gt_masks`, :func:`gt_valid`). Original image sizes come from
  ``batch.orig_size`` (the batch image size where it is None).
* **Masks that multiply images** (saliency metric, class specificity) must lie in [0, 1]; masked images are
  ``M * x`` in normalised space (0 = the data set's mean colour). Metrics that query the classifier take
  it in the constructor and keep it out of their ``state_dict``.
* **Bad maps never crash**: non-finite values are set to 0, the sample is still scored and counted in the
  ``invalid`` key; for the ranking metrics (pointing game, insertion / deletion) a constant map is invalid
  too (no argmax: a pointing-game miss; no ranking: pixels go in the metric's tie order). Samples without
  ground truth are counted in ``skipped``.

Metrics (``update`` arguments -> ``compute()`` keys)
----------------------------------------------------

* :class:`PointingGame` ``(maps, batch, classes, difficult=None)`` -> accuracy, accuracy_difficult,
  hit_rate, invalid, skipped, difficult_unlisted; ``update_points(points, batch, classes)`` for point
  baselines (:func:`centre_points`); the "difficult" subset from a published list (:class:`DifficultList`)
  or the coverage rule (:func:`difficult_pairs`), named by ``PointingGame.difficult_source``.
* :class:`EnergyPointingGame` ``(maps, batch, classes)`` -> energy, energy_class_mean, invalid, skipped.
* :class:`SegmentationMetrics` ``(maps, batch, classes)`` -> every key of :data:`SEGMENTATION_KEYS`,
  samples, invalid, skipped.
* :class:`SaliencyMetric` ``(images, maps, classes)`` -> saliency, area, probability, samples, invalid
  (``mode="paper"``: one merged mask per image, softmax; ``"pairs"``: one per image-class pair, sigmoid).
* :class:`ClassSpecificity` ``(images, masks [B, C, h, w], labels [B, C])`` -> unmasked, own_mask,
  other_present_mask, absent_mask, invalid.
* :class:`InsertionDeletion` ``(images, maps, classes)`` -> deletion, insertion, samples, invalid;
  :func:`insertion_deletion_curves` gives the curves for plots (``tie_order="rise"``: tied pixels in
  RISE's order, ``"raster"``: in row-major order).
* :class:`LocalisationScore` ``(maps, cells)`` on grid images -> mean, median, q1, q3, samples, invalid
  (keeps the per-sample scores, ``dist_reduce_fx="cat"``).
"""

from explainer.metrics.causal import (
    InsertionDeletion,
    insertion_deletion_curves,
    rise_blur,
    rise_blur_kernel,
    top_classes,
    trapezoid_auc,
)
from explainer.metrics.common import gt_masks, gt_valid, image_sizes
from explainer.metrics.difficult import DifficultList, difficult_pairs
from explainer.metrics.encoding import EncodingCheck
from explainer.metrics.localisation import LocalisationScore, localisation_scores
from explainer.metrics.pointing import (
    EnergyPointingGame,
    PointingGame,
    argmax_points,
    centre_points,
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
    "SEGMENTATION_KEYS",
    "ClassSpecificity",
    "DifficultList",
    "EncodingCheck",
    "EnergyPointingGame",
    "InsertionDeletion",
    "LocalisationScore",
    "PointingGame",
    "SaliencyMetric",
    "SegmentationMetrics",
    "argmax_points",
    "centre_points",
    "difficult_pairs",
    "gt_masks",
    "localisation_scores",
    "gt_valid",
    "image_sizes",
    "insertion_deletion_curves",
    "normalize_maps",
    "rise_blur",
    "rise_blur_kernel",
    "roc_auc_per_sample",
    "segmentation_scores",
    "top_classes",
    "trapezoid_auc",
]
