"""Mask-versus-ground-truth scores of the Explainer paper (Stalder et al., 2022).

For a mask ``M`` in [0, 1] and a ground truth ``G`` of the same size (``N`` pixels):

=======================  ===========================================================================
``d_f1_25/50/75``        F1 of ``M > t`` against ``G > t`` for ``t`` = 0.25, 0.5, 0.75
``mean_f1``              mean of the three
``c_f1``                 soft F1: ``2 tp / (2 tp + fp + fn)``, ``tp = sum(M G)``, ``fp = sum(M (1 - G))``,
                         ``fn = sum((1 - M) G)``
``acc``                  soft accuracy ``(tp + tn) / N``, ``tn = sum((1 - M)(1 - G))``
``d_iou``                IoU of ``M > t`` and ``G > t``, averaged over ``t`` = 0.1, 0.2, ..., 0.9
``c_iou``                continuous IoU ``sum(min(M, G)) / sum(max(M, G))``
``auc``                  ROC-AUC of ``M`` as a score for ``G > 0`` (ties count one half)
``overlap``              ``1 - mean|G - M|``
``background_coverage``  ``mean(relu(M - G)) / (1 - mean(G))`` (lower is better)
``object_coverage``      ``1 - mean(relu(G - M)) / mean(G)``
=======================  ===========================================================================

Every score is computed per sample and then averaged over samples, so the states are plain sums and
counts (DDP-safe); the AUC, too, is a per-sample AUC computed from ranks (Mann-Whitney) and summed, not
a pooled AUC that would need every pixel of every rank. A score that is undefined for a sample (AUC or
background coverage when the ground truth covers the whole image) leaves that sample out of that key's
mean only.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from explainer.data.batch import Batch
from explainer.metrics.common import (
    GroundTruth,
    check_maps,
    check_source,
    gt_masks,
    gt_valid,
    resize_maps,
    sanitize_maps,
)

SEGMENTATION_KEYS = (
    "d_f1_25",
    "d_f1_50",
    "d_f1_75",
    "mean_f1",
    "c_f1",
    "acc",
    "d_iou",
    "c_iou",
    "auc",
    "overlap",
    "background_coverage",
    "object_coverage",
)
F1_THRESHOLDS = (0.25, 0.5, 0.75)
IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Normalization = Literal["none", "minmax", "max"]
Mode = Literal["pairs", "merged"]


def roc_auc_per_sample(scores: Tensor, positive: Tensor) -> Tensor:
    """ROC-AUC of each row of ``scores`` against the bool labels ``positive``, from average ranks.

    ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with ``R_pos`` the sum of the (tie-averaged,
    1-based) ranks of the positives; one sort per row, no loop.

    Args:
        scores: ``[N, P]`` scores.
        positive: ``[N, P]`` bool labels.

    Returns:
        ``[N]`` float64 AUCs, NaN where a row has no positive or no negative.
    """
    n, p = scores.shape
    ordered, order = scores.sort(dim=1, stable=True)
    position = torch.arange(p, device=scores.device).expand(n, p)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(ordered, dtype=torch.bool)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, 0).cummax(dim=1).values
    last = torch.where(ends, position, p).flip(1).cummin(dim=1).values.flip(1)
    rank = (first + last).double() / 2 + 1
    pos_sorted = positive.gather(1, order)
    n_pos = positive.sum(1).double()
    n_neg = p - n_pos
    rank_sum = (rank * pos_sorted).sum(1)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _f1(pred: Tensor, truth: Tensor) -> Tensor:
    tp = (pred & truth).sum(1).double()
    wrong = (pred ^ truth).sum(1).double()
    return 2 * tp / (2 * tp + wrong)


def _iou(pred: Tensor, truth: Tensor) -> Tensor:
    return (pred & truth).sum(1).double() / (pred | truth).sum(1).double()


def segmentation_scores(masks: Tensor, gt: Tensor) -> dict[str, Tensor]:
    """All scores of the module docstring for a batch of samples.

    Args:
        masks: ``[N, H, W]`` (or ``[N, P]``) masks in [0, 1].
        gt: ground truth of the same shape (bool or float in [0, 1]).

    Returns:
        ``{key: [N] float64}`` for every key of :data:`SEGMENTATION_KEYS`; NaN where undefined.
    """
    if masks.shape != gt.shape:
        raise ValueError(f"masks {tuple(masks.shape)} and ground truth {tuple(gt.shape)} must have the same shape")
    m = masks.flatten(1).double()
    g = gt.flatten(1).double()
    tp = (m * g).sum(1)
    fp = (m * (1 - g)).sum(1)
    fn = ((1 - m) * g).sum(1)
    tn = ((1 - m) * (1 - g)).sum(1)
    g_mean = g.mean(1)
    out = {f"d_f1_{round(t * 100)}": _f1(m > t, g > t) for t in F1_THRESHOLDS}
    out["mean_f1"] = torch.stack([out[f"d_f1_{round(t * 100)}"] for t in F1_THRESHOLDS]).mean(0)
    out["c_f1"] = 2 * tp / (2 * tp + fp + fn)
    out["acc"] = (tp + tn) / m.shape[1]
    out["d_iou"] = torch.stack([_iou(m > t, g > t) for t in IOU_THRESHOLDS]).mean(0)
    out["c_iou"] = torch.minimum(m, g).sum(1) / torch.maximum(m, g).sum(1)
    out["auc"] = roc_auc_per_sample(m, g > 0)
    out["overlap"] = 1 - (g - m).abs().mean(1)
    out["background_coverage"] = (m - g).clamp(min=0).mean(1) / (1 - g_mean)
    out["object_coverage"] = 1 - (g - m).clamp(min=0).mean(1) / g_mean
    return {key: out[key] for key in SEGMENTATION_KEYS}


def normalize_maps(maps: Tensor, how: str) -> Tensor:
    """Brings maps into [0, 1], per map.

    Args:
        maps: ``[B, K, H, W]`` finite maps.
        how: ``"none"`` (maps must already lie in [0, 1]: Explainer masks, RISE probabilities),
            ``"minmax"`` (``(M - min) / (max - min)``; constant maps become 0) or ``"max"`` (positive part
            over its maximum; maps without positive values become 0).

    Returns:
        The maps in [0, 1].
    """
    if how == "none":
        low, high = float(maps.min()), float(maps.max())
        if low < -1e-5 or high > 1 + 1e-5:
            raise ValueError(
                f"maps must lie in [0, 1] with normalize='none', got values in [{low:.4g}, {high:.4g}]; "
                "pass normalize='minmax' or normalize='max' for unnormalised attributions"
            )
        return maps.clamp(0, 1)
    flat = maps.flatten(2)
    if how == "minmax":
        low = flat.amin(-1, keepdim=True)
        span = flat.amax(-1, keepdim=True) - low
        out = torch.where(span > 0, (flat - low) / span.clamp(min=torch.finfo(maps.dtype).tiny), 0.0)
    elif how == "max":
        flat = flat.clamp(min=0)
        top = flat.amax(-1, keepdim=True)
        out = torch.where(top > 0, flat / top.clamp(min=torch.finfo(maps.dtype).tiny), 0.0)
    else:
        raise ValueError(f"unknown normalize '{how}'; use 'none', 'minmax' or 'max'")
    return out.view_as(maps)


class SegmentationMetrics(Metric):
    """The Explainer paper's mask scores (see the module docstring), averaged over samples.

    Maps are resized bilinearly to the batch image size and compared with the ground truth there.

    * ``mode="pairs"``: one sample per image-class pair (``classes[b, k] >= 0`` with ground truth).
    * ``mode="merged"``: one sample per image: the pixel-wise max of the maps of its classes against the
      union of their ground truth (how the paper merges multi-class masks of every method).

    Samples without ground truth (padding, images without masks, empty ground truth) are skipped and
    counted in ``skipped``. Maps with non-finite values are scored with those values set to 0 and counted
    in ``invalid``.

    Args:
        source: ground truth, ``"masks"`` or ``"boxes"`` (the union of the class's boxes, difficult
            included; with boxes, ``c_iou`` is the continuous IoU of a mask against the objects' boxes).
        mode: ``"pairs"`` or ``"merged"``.
        normalize: how maps are brought into [0, 1], see :func:`normalize_maps`.
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self, source: GroundTruth = "masks", mode: Mode = "pairs", normalize: Normalization = "none", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        check_source(source)
        if mode not in ("pairs", "merged"):
            raise ValueError(f"unknown mode '{mode}'; use 'pairs' or 'merged'")
        if normalize not in ("none", "minmax", "max"):
            raise ValueError(f"unknown normalize '{normalize}'; use 'none', 'minmax' or 'max'")
        self.source = source
        self.mode = mode
        self.normalize = normalize
        self.add_state("sums", torch.zeros(len(SEGMENTATION_KEYS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(len(SEGMENTATION_KEYS), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("invalid", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, maps: Tensor, batch: Batch, classes: Tensor) -> None:
        """Scores one batch.

        Args:
            maps: ``[B, K, h, w]`` maps for ``classes``.
            batch: the batch (ground truth).
            classes: ``[B, K]`` class indices (``-1`` = padding).
        """
        check_maps(maps, classes)
        device = batch.image.device
        classes = classes.to(device)
        maps, nonfinite = sanitize_maps(maps.to(device))
        maps = normalize_maps(resize_maps(maps, tuple(batch.image.shape[-2:])), self.normalize)
        gt = gt_masks(batch, classes, self.source)
        real = classes >= 0
        valid = gt_valid(batch, classes, self.source)
        if self.mode == "merged":
            maps = (maps * valid.view(*valid.shape, 1, 1)).amax(1)
            gt = (gt & valid.view(*valid.shape, 1, 1)).any(1)
            nonfinite = (nonfinite & valid).any(1)
            real, valid = real.any(1), valid.any(1)
        valid = valid & gt.flatten(-2).any(-1)
        scores = segmentation_scores(maps[valid], gt[valid])
        values = torch.stack([scores[key] for key in SEGMENTATION_KEYS])  # [keys, n]
        defined = torch.isfinite(values)
        self.sums += torch.where(defined, values, 0.0).sum(1).to(self.sums.device)
        self.counts += defined.sum(1).to(self.counts.device)
        self.invalid += (nonfinite & valid).sum().to(self.invalid.device)
        self.skipped += (real & ~valid).sum().to(self.skipped.device)

    def compute(self) -> dict[str, Tensor]:
        """Returns the mean of every key of :data:`SEGMENTATION_KEYS` (NaN without samples), plus
        ``samples`` (scored samples), ``invalid`` and ``skipped`` (counts)."""
        means = self.sums / self.counts.double()
        out = {key: means[i] for i, key in enumerate(SEGMENTATION_KEYS)}
        out["samples"] = self.counts[SEGMENTATION_KEYS.index("acc")].double()  # acc is always defined
        out["invalid"] = self.invalid.double()
        out["skipped"] = self.skipped.double()
        return out
