"""Reference maps that look at no classifier: a centred Gaussian, a constant map, the ground truth."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from explainer.methods.base import AttributionMethod, check_classes, register_method
from explainer.ops import gather_classes


def _pad_zero(maps: Tensor, classes: Tensor) -> Tensor:
    return maps * (classes >= 0).view(*classes.shape, 1, 1).to(maps.dtype)


@register_method
class CentreBaseline(AttributionMethod):
    """The same centred Gaussian for every image and class (the pointing game's centre baseline).

    Args:
        classifier: ignored (accepted so every method is built alike).
        sigma: standard deviation as a fraction of the image height / width.
    """

    name = "centre"
    needs_classifier = False
    cost = "free"
    unit_range = True

    def __init__(self, classifier: nn.Module | None = None, sigma: float = 0.25) -> None:
        super().__init__(None)
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        """Maps ``[B, K, H, W]``, peaking at the image centre (``-1`` classes give zero maps)."""
        check_classes(images, classes)
        h, w = images.shape[-2:]
        y = (torch.arange(h, device=images.device, dtype=images.dtype) - (h - 1) / 2) / (self.sigma * h)
        x = (torch.arange(w, device=images.device, dtype=images.dtype) - (w - 1) / 2) / (self.sigma * w)
        gauss = torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
        return _pad_zero(gauss.expand(*classes.shape, h, w), classes)


@register_method
class UniformBaseline(AttributionMethod):
    """A constant map of ones for every image and class.

    Args:
        classifier: ignored (accepted so every method is built alike).
    """

    name = "uniform"
    needs_classifier = False
    cost = "free"
    unit_range = True

    def __init__(self, classifier: nn.Module | None = None) -> None:
        super().__init__(None)

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        """Maps ``[B, K, H, W]`` of ones (``-1`` classes give zero maps)."""
        check_classes(images, classes)
        ones = images.new_ones(*classes.shape, *images.shape[-2:])
        return _pad_zero(ones, classes)


def box_masks(boxes: list[Tensor], box_labels: list[Tensor], num_classes: int, size: tuple[int, int]) -> Tensor:
    """Per-class masks ``[B, C, H, W]`` (float 0/1): the union of each class's boxes.

    Args:
        boxes: per image ``[n_i, 4]`` boxes ``(x0, y0, x1, y1)`` in pixels; pixel ``(i, j)`` is inside when its
            centre ``(j + 0.5, i + 0.5)`` lies in the box.
        box_labels: per image ``[n_i]`` class indices.
        num_classes: C.
        size: ``(H, W)``.

    Returns:
        The masks.
    """
    h, w = size
    b = len(boxes)
    device = boxes[0].device if boxes else torch.device("cpu")
    out = torch.zeros(b * num_classes, h, w, device=device)
    counts = torch.tensor([len(x) for x in boxes], device=device)
    if int(counts.sum()) == 0:
        return out.view(b, num_classes, h, w)
    allb = torch.cat([x.reshape(-1, 4) for x in boxes]).float()
    alll = torch.cat([x.reshape(-1) for x in box_labels]).long().to(device)
    image = torch.repeat_interleave(torch.arange(b, device=device), counts)
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    inside_y = (ys[None] >= allb[:, 1:2]) & (ys[None] <= allb[:, 3:4])  # [M, H]
    inside_x = (xs[None] >= allb[:, 0:1]) & (xs[None] <= allb[:, 2:3])  # [M, W]
    inside = (inside_y[:, :, None] & inside_x[:, None, :]).float()
    out.index_add_(0, image * num_classes + alll, inside)
    return (out > 0).float().view(b, num_classes, h, w)


@register_method
class OracleBaseline(AttributionMethod):
    """The ground truth as the map: an upper reference for localisation metrics.

    Call as ``attribute(images, classes, masks=batch.masks)`` with per-class masks ``[B, C, H, W]``, or with
    ``boxes=batch.boxes, box_labels=batch.box_labels`` (the union of each class's boxes, see
    :func:`box_masks`) for data without masks; masks win when both are given.

    Args:
        classifier: ignored (accepted so every method is built alike).
    """

    name = "oracle"
    needs_classifier = False
    cost = "free"
    unit_range = True

    def __init__(self, classifier: nn.Module | None = None) -> None:
        super().__init__(None)

    def attribute(
        self,
        images: Tensor,
        classes: Tensor,
        masks: Tensor | None = None,
        boxes: list[Tensor] | None = None,
        box_labels: list[Tensor] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Maps ``[B, K, H, W]``: the ground truth of ``classes`` (``-1`` classes give zero maps).

        Args:
            images: ``[B, 3, H, W]`` images (for the shape only).
            classes: ``[B, K]`` class indices.
            masks: ``[B, C, H, W]`` per-class ground-truth masks (bool or float).
            boxes: per image ``[n_i, 4]`` boxes, with ``box_labels``; used when ``masks`` is None.
            box_labels: per image ``[n_i]`` class indices of ``boxes``.
        """
        check_classes(images, classes)
        h, w = images.shape[-2:]
        if masks is None:
            if boxes is None or box_labels is None:
                raise ValueError(
                    "the oracle needs the ground truth: call attribute(images, classes, masks=batch.masks) or "
                    "attribute(images, classes, boxes=batch.boxes, box_labels=batch.box_labels)"
                )
            num_classes = int(max([int(classes.max()) + 1] + [int(x.max()) + 1 for x in box_labels if x.numel()]))
            masks = box_masks(boxes, box_labels, num_classes, (h, w))
        if masks.ndim != 4 or masks.shape[0] != images.shape[0] or tuple(masks.shape[-2:]) != (h, w):
            raise ValueError(f"masks must be [B, C, H, W] = [{images.shape[0]}, C, {h}, {w}], got {tuple(masks.shape)}")
        if int(classes.max()) >= masks.shape[1]:
            raise ValueError(f"class index {int(classes.max())} out of range for masks of {masks.shape[1]} classes")
        return gather_classes(masks.to(device=images.device, dtype=images.dtype), classes)
