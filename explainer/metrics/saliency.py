"""Classifier-based mask scores: the saliency metric (Dabkowski & Gal) and the class-specificity test.

Masked images are ``M * x`` in normalised space, so masked-out pixels take the data set's mean colour
(0), as in the Explainer's training objective.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from explainer.metrics.common import (
    ClassifierMetric,
    check_maps,
    class_log_probabilities,
    class_probabilities,
    forward_in_chunks,
    maps_to_unit_range,
)

SALIENCY_MODES = ("paper", "pairs")
SaliencyMode = Literal["paper", "pairs"]
_MODE_ACTIVATION = {"paper": "softmax", "pairs": "sigmoid"}


class SaliencyMetric(ClassifierMetric):
    """Saliency metric of Dabkowski & Gal (2017): ``s = log(max(a, a_min)) - log(p)``, lower is better.

    ``a = mean(M)`` is the area of a mask ``M`` in [0, 1] (floored at ``a_min = area_floor``, 0.05), ``p``
    the classifier's confidence in the explained class(es) on the masked image ``M * x``. It rewards small
    masks that keep the classifier confident. The two settings:

    * ``mode="paper"`` (default), the Explainer paper's evaluation (NN-Explainer,
      ``src/evaluation/eval_utils/compute_scores.py``, ``gen_evaluation`` and ``compute_numbers``, with
      ``saliency`` of ``src/evaluation/eval_utils/assessment_metrics.py``): **one sample per image**. The
      image's maps of its asked classes ``S`` are merged by the pixel-wise max,
      ``M = max_{c in S} M_c`` (``compute_masks.py``, ``merge_mask``; the Explainer's own test mask is
      ``sigmoid(max_c S_c)``, the same thing), and ``p = sum_{c in S} softmax(f(M * x))_c``: the **softmax**
      probabilities of the classes summed. ``activation="sigmoid"`` keeps the merged mask but takes
      ``p = mean_{c in S} sigmoid(f(M * x))_c`` instead (a multi-label variant, not the paper's).
    * ``mode="pairs"``: **one sample per image-class pair** ``(b, c)``, ``M = M_c`` and
      ``p = sigmoid(f(M_c * x))_c`` (``activation="softmax"``: ``softmax(...)_c``).

    The mean of ``s`` over the samples is ``saliency``. Log-probabilities are computed stably
    (``log p = logsumexp_{c in S} z_c - logsumexp_c z_c`` for the summed softmax). Maps are resized
    bilinearly to the image size and must lie in [0, 1]; maps with non-finite values are scored with those
    values set to 0 and counted in ``invalid`` (the reference zeroes the whole mask instead).

    Args:
        classifier: the classifier (logits), see :class:`~explainer.metrics.common.ClassifierMetric`.
        activation: ``"softmax"`` or ``"sigmoid"``; ``None`` (default) takes the mode's own: softmax for
            ``"paper"``, sigmoid for ``"pairs"``.
        area_floor: the floor ``a_min`` of the mask area.
        mode: ``"paper"`` (one merged mask per image) or ``"pairs"`` (one mask per image-class pair).
        chunk_size: the largest forward pass.
        **kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> metric = SaliencyMetric(classifier)                        # the paper's setting
        >>> metric(images, masks, present_classes(labels))["saliency"]  # this batch's value
    """

    higher_is_better = False

    def __init__(
        self,
        classifier: nn.Module,
        activation: Literal["sigmoid", "softmax"] | None = None,
        area_floor: float = 0.05,
        mode: SaliencyMode = "paper",
        chunk_size: int = 64,
        **kwargs: Any,
    ) -> None:
        if mode not in SALIENCY_MODES:
            raise ValueError(
                f"unknown saliency mode {mode!r}; use one of {SALIENCY_MODES}: 'paper' scores one mask per "
                "image (the max over its classes' masks) with the summed softmax probability of those classes "
                "(the Explainer paper), 'pairs' one mask per image-class pair with that class's sigmoid probability"
            )
        super().__init__(classifier, _MODE_ACTIVATION[mode] if activation is None else activation, chunk_size, **kwargs)
        if not area_floor > 0:
            raise ValueError(f"area_floor must be > 0, got {area_floor}")
        self.area_floor = area_floor
        self.mode = mode
        for name in ("saliency_sum", "area_sum", "probability_sum"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("invalid", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: Tensor, maps: Tensor, classes: Tensor) -> None:
        """Scores one batch.

        Args:
            images: ``[B, 3, H, W]`` normalised images.
            maps: ``[B, K, h, w]`` masks in [0, 1] for ``classes``.
            classes: ``[B, K]`` class indices (``-1`` = padding, ignored; an image without any is skipped).
        """
        check_maps(maps, classes)
        classes = classes.to(images.device)
        masks, nonfinite = maps_to_unit_range(maps.to(images.device), tuple(images.shape[-2:]))
        valid = classes >= 0
        if self.mode == "paper":
            scored = valid.any(1)
            masks = (masks * valid.view(*valid.shape, 1, 1)).amax(1, keepdim=True)[scored]
            nonfinite = (nonfinite & valid).any(1)[scored]
            image_index = scored.nonzero().squeeze(1)
            targets = valid[image_index]  # [n, K] which asked classes count
            target_classes = classes[image_index].clamp(min=0)
        else:
            masks = masks[valid].unsqueeze(1)
            nonfinite = nonfinite[valid]
            image_index = valid.nonzero()[:, 0]
            target_classes = classes[valid].unsqueeze(1)
            targets = torch.ones_like(target_classes, dtype=torch.bool)
        logits = forward_in_chunks(
            self.classifier,
            lambda i: images[image_index[i]] * masks[i],
            len(image_index),
            self.chunk_size,
            images.device,
        ).double()
        log_p = _log_target_probability(logits, target_classes, targets, self.activation)
        area = masks.flatten(1).double().mean(1)
        saliency = area.clamp(min=self.area_floor).log() - log_p
        self.saliency_sum += saliency.sum().to(self.saliency_sum.device)
        self.area_sum += area.sum().to(self.area_sum.device)
        self.probability_sum += log_p.exp().sum().to(self.probability_sum.device)
        self.count += torch.tensor(len(image_index), device=self.count.device)
        self.invalid += nonfinite.sum().to(self.invalid.device)

    def compute(self) -> dict[str, Tensor]:
        """Returns ``saliency`` (mean, lower is better), ``area`` (mean mask area), ``probability`` (mean
        ``p`` of the masked images), ``samples`` and ``invalid`` (counts)."""
        count = self.count.double()
        return {
            "saliency": self.saliency_sum / count,
            "area": self.area_sum / count,
            "probability": self.probability_sum / count,
            "samples": count,
            "invalid": self.invalid.double(),
        }


def _log_target_probability(logits: Tensor, classes: Tensor, targets: Tensor, activation: str) -> Tensor:
    """``[n]`` log of the summed softmax (or mean sigmoid) probability of the selected classes.

    Args:
        logits: ``[n, C]`` logits of the masked images.
        classes: ``[n, K]`` class indices (entries where ``targets`` is False are ignored).
        targets: ``[n, K]`` bool, which entries count (at least one per row).
        activation: ``"softmax"``: ``log sum_k p_k``; ``"sigmoid"``: ``log mean_k sigmoid(z_k)``.
    """
    log_probs = class_log_probabilities(logits, activation).gather(1, classes)
    log_probs = log_probs.masked_fill(~targets, float("-inf"))
    log_p = torch.logsumexp(log_probs, dim=1)
    if activation == "sigmoid":
        log_p = log_p - targets.sum(1).double().log()
    return log_p


class ClassSpecificity(ClassifierMetric):
    """Class-specificity test of the Explainer paper: is the mask of class ``t`` specific to ``t``?

    For every present class ``t`` of an image ``x`` with class masks ``m_k`` (one per class, all classes):

    * ``unmasked``: ``p_t(x)``;
    * ``own_mask``: ``p_t(x * m_t)``;
    * ``other_present_mask``: ``p_t(x * m_k)`` for every other present class ``k != t``;
    * ``absent_mask``: ``p_t(x * m_k)`` for every absent class ``k`` (if ``include_absent``).

    Each is the mean over its (image, t) pairs or (image, t, k) triples. A class-specific explainer keeps
    ``own_mask`` high and drives both ``*_mask`` keys towards 0 (Explainer ~3-9% on VOC vs 60-70%
    unmasked). One forward pass per masked image serves all target classes at once: ``B * C`` (or
    ``B * present``) masked images per batch, chunked.

    Masks must lie in [0, 1] (resized bilinearly to the image size); masks with non-finite values are
    scored with those values set to 0 and counted in ``invalid``.

    Args:
        classifier: the classifier (logits), see :class:`~explainer.metrics.common.ClassifierMetric`.
        activation: ``"sigmoid"`` (multi-label) or ``"softmax"``.
        include_absent: also evaluate the masks of absent classes (``C`` forward passes per image instead
            of one per present class).
        chunk_size: the largest forward pass.
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better = None

    def __init__(
        self,
        classifier: nn.Module,
        activation: Literal["sigmoid", "softmax"] = "sigmoid",
        include_absent: bool = True,
        chunk_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(classifier, activation, chunk_size, **kwargs)
        self.include_absent = include_absent
        for name in ("unmasked", "own_mask", "other_present_mask", "absent_mask"):
            self.add_state(f"{name}_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("invalid", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: Tensor, masks: Tensor, labels: Tensor) -> None:
        """Scores one batch.

        Args:
            images: ``[B, 3, H, W]`` normalised images.
            masks: ``[B, C, h, w]`` masks in [0, 1] of **every** class.
            labels: ``[B, C]`` multi-hot labels (which classes are present).
        """
        if masks.ndim != 4 or labels.shape != masks.shape[:2] or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"masks must be [B, C, h, w] for every class and labels [B, C]; got masks {tuple(masks.shape)}, "
                f"labels {tuple(labels.shape)}, images {tuple(images.shape)}"
            )
        device = images.device
        masks, nonfinite = maps_to_unit_range(masks.to(device), tuple(images.shape[-2:]), "masks")
        present = labels.to(device) > 0.5
        needed = torch.ones_like(present) if self.include_absent else present
        image_index, mask_index = needed.nonzero(as_tuple=True)
        act = self.activation
        clean = class_probabilities(
            forward_in_chunks(self.classifier, lambda i: images[i], images.shape[0], self.chunk_size, device).double(),
            act,
        )
        masked = class_probabilities(
            forward_in_chunks(
                self.classifier,
                lambda i: images[image_index[i]] * masks[image_index[i], mask_index[i]].unsqueeze(1),
                len(image_index),
                self.chunk_size,
                device,
            ).double(),
            act,
        )
        num_classes = present.shape[1]
        if masked.shape[1] != num_classes:
            raise ValueError(f"the classifier gives {masked.shape[1]} classes but the labels have {num_classes}")
        grid = torch.zeros(*present.shape, num_classes, dtype=torch.float64, device=device)  # [B, k (mask), t]
        grid[image_index, mask_index] = masked
        target = present.unsqueeze(1)  # t present
        eye = torch.eye(num_classes, dtype=torch.bool, device=device)
        own = grid.diagonal(dim1=1, dim2=2)  # [B, t]: p_t(x * m_t)
        other = target & present.unsqueeze(2) & ~eye
        absent = target & ~present.unsqueeze(2) if self.include_absent else torch.zeros_like(other)
        for name, values, select in (
            ("unmasked", clean, present),
            ("own_mask", own, present),
            ("other_present_mask", grid, other),
            ("absent_mask", grid, absent),
        ):
            getattr(self, f"{name}_sum").add_(values[select].sum().to(self.invalid.device))
            getattr(self, f"{name}_count").add_(select.sum().to(self.invalid.device))
        self.invalid += (nonfinite & needed).sum().to(self.invalid.device)

    def compute(self) -> dict[str, Tensor]:
        """Returns the means ``unmasked``, ``own_mask``, ``other_present_mask`` and ``absent_mask`` (NaN when
        nothing was scored) and ``invalid`` (masks with non-finite values)."""
        out = {}
        for name in ("unmasked", "own_mask", "other_present_mask", "absent_mask"):
            out[name] = getattr(self, f"{name}_sum") / getattr(self, f"{name}_count").double()
        out["invalid"] = self.invalid.double()
        return out
