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


class SaliencyMetric(ClassifierMetric):
    """Saliency metric of Dabkowski & Gal (2017): ``log(max(mean(M), a)) - log(p_c(M * x))``, lower is better.

    It rewards small masks (area floored at ``a = 0.05``) that keep the classifier's confidence in class
    ``c``. The original used softmax probabilities; for multi-label classifiers this metric uses the
    **sigmoid** probability of ``c`` (``activation="sigmoid"``, the default), as the Explainer paper's
    multi-label setting requires; ``activation="softmax"`` reproduces the single-label form.

    * ``mode="pairs"``: one sample per image-class pair, ``M`` the map of that class.
    * ``mode="merged"``: one sample per image, ``M`` the pixel-wise max of its classes' maps; ``p`` is the
      mean sigmoid probability of those classes (``softmax``: their summed probability, as the original).

    Maps are resized bilinearly to the image size and must lie in [0, 1]; maps with non-finite values are
    scored with those values set to 0 and counted in ``invalid``.

    Args:
        classifier: the classifier (logits), see :class:`~explainer.metrics.common.ClassifierMetric`.
        activation: ``"sigmoid"`` or ``"softmax"``.
        area_floor: the floor ``a`` of the mask area.
        mode: ``"pairs"`` or ``"merged"``.
        chunk_size: the largest forward pass.
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better = False

    def __init__(
        self,
        classifier: nn.Module,
        activation: Literal["sigmoid", "softmax"] = "sigmoid",
        area_floor: float = 0.05,
        mode: Literal["pairs", "merged"] = "pairs",
        chunk_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(classifier, activation, chunk_size, **kwargs)
        if mode not in ("pairs", "merged"):
            raise ValueError(f"unknown mode '{mode}'; use 'pairs' or 'merged'")
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
            classes: ``[B, K]`` class indices (``-1`` = padding, ignored).
        """
        check_maps(maps, classes)
        classes = classes.to(images.device)
        masks, nonfinite = maps_to_unit_range(maps.to(images.device), tuple(images.shape[-2:]))
        valid = classes >= 0
        if self.mode == "merged":
            masks = (masks * valid.view(*valid.shape, 1, 1)).amax(1, keepdim=True)[valid.any(1)]
            nonfinite = (nonfinite & valid).any(1)[valid.any(1)]
            image_index = valid.any(1).nonzero().squeeze(1)
            targets = valid[image_index]  # [n, K] which asked classes count
            target_classes = classes[image_index]
        else:
            masks = masks[valid].unsqueeze(1)
            nonfinite = nonfinite[valid]
            image_index = valid.nonzero()[:, 0]
            target_classes = classes[valid].unsqueeze(1)
            targets = torch.ones_like(target_classes, dtype=torch.bool)
        logits = forward_in_chunks(
            self.classifier, lambda i: images[image_index[i]] * masks[i], len(image_index), self.chunk_size,
            images.device,
        ).double()
        if self.mode == "pairs":
            log_p = class_log_probabilities(logits, self.activation).gather(1, target_classes).squeeze(1)
        else:
            probs = class_probabilities(logits, self.activation).gather(1, target_classes.clamp(min=0))
            probs = (probs * targets).sum(1)
            if self.activation == "sigmoid":
                probs = probs / targets.sum(1)
            log_p = probs.clamp(min=torch.finfo(probs.dtype).tiny).log()
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
                self.classifier, lambda i: images[image_index[i]] * masks[image_index[i], mask_index[i]].unsqueeze(1),
                len(image_index), self.chunk_size, device,
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
