"""The typed sample and batch that every data module yields.

Every dataset of the project (digit scenes, VOC, COCO, custom folders, grids) produces :class:`Sample`
objects, and :func:`collate` turns a list of them into one :class:`Batch`. Modules, metrics and callbacks
read only these fields, so no dataset-specific branch is ever needed downstream.

Conventions:
    * ``image`` is normalised with the data module's ``mean`` / ``std`` (so 0 is the dataset mean colour).
    * ``labels`` is a float multi-hot vector over the data module's classes.
    * ``masks`` holds one boolean ground-truth mask per class, at the image's (transformed) size.
    * ``boxes`` are ``[n, 4]`` float ``(x0, y0, x1, y1)`` in pixels of the transformed image, with
      ``box_labels`` ``[n]`` (class index) and ``difficult`` ``[n]`` flags.
    * ``keypoints`` are ``[n, P, 2]`` ``(x, y)`` part locations per object (NaN where a part is not visible).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor


@dataclass
class Sample:
    """One image and its annotations (see the module docstring for the conventions).

    Args:
        image: ``[3, H, W]`` normalised image.
        labels: ``[C]`` float multi-hot labels.
        masks: optional ``[C, H, W]`` boolean per-class masks.
        boxes: optional ``[n, 4]`` float boxes ``(x0, y0, x1, y1)``.
        box_labels: optional ``[n]`` long class index per box.
        difficult: optional ``[n]`` bool "difficult" flag per box.
        keypoints: optional ``[n, P, 2]`` float part keypoints per object, aligned with ``boxes``.
        id: an identifier of the image (file stem, COCO id, scene index).
        orig_size: optional ``(H, W)`` of the image before any resize.
    """

    image: Tensor
    labels: Tensor
    masks: Tensor | None = None
    boxes: Tensor | None = None
    box_labels: Tensor | None = None
    difficult: Tensor | None = None
    keypoints: Tensor | None = None
    id: str = ""
    orig_size: tuple[int, int] | None = None


@dataclass
class Batch:
    """A collated list of :class:`Sample`.

    Lightning moves a dataclass and the tensors inside its lists to the device, so a ``Batch`` can be
    returned straight from a ``DataLoader``.

    Args:
        image: ``[B, 3, H, W]`` normalised images.
        labels: ``[B, C]`` float multi-hot labels.
        masks: ``[B, C, H, W]`` bool masks, or None when no sample has masks.
        mask_valid: ``[B]`` bool, True where the sample came with masks (VOC has masks for few images).
        boxes: per-sample ``[n_i, 4]`` boxes, or None.
        box_labels: per-sample ``[n_i]`` class indices, or None.
        difficult: per-sample ``[n_i]`` flags, or None.
        keypoints: per-sample ``[n_i, P, 2]`` keypoints, or None.
        ids: the sample ids.
        orig_size: ``[B, 2]`` long ``(H, W)`` of the original images, or None.
    """

    image: Tensor
    labels: Tensor
    masks: Tensor | None = None
    mask_valid: Tensor | None = None
    boxes: list[Tensor] | None = None
    box_labels: list[Tensor] | None = None
    difficult: list[Tensor] | None = None
    keypoints: list[Tensor] | None = None
    ids: list[str] | None = None
    orig_size: Tensor | None = None

    def __len__(self) -> int:
        return self.image.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        """Returns a copy with every tensor moved to ``device``."""

        def move(value: Any) -> Any:
            if isinstance(value, Tensor):
                return value.to(device)
            if isinstance(value, list):
                return [move(v) for v in value]
            return value

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def _stack_optional(samples: list[Sample], name: str) -> list[Tensor] | None:
    values = [getattr(s, name) for s in samples]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise ValueError(f"some samples have '{name}' and others do not; a data module must be consistent")
    return values


def collate(samples: list[Sample | None]) -> Batch | None:
    """Collates samples into a :class:`Batch` (the ``collate_fn`` of every data module).

    Args:
        samples: samples of equal image size; ``None`` entries (items a dataset skipped, e.g. corrupt
            images with ``skip_corrupt=True``) are dropped.

    Returns:
        The batch, or ``None`` when every sample was skipped (the data modules' loader drops such batches).
        Samples without masks get all-False masks and ``mask_valid=False`` when others have them.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    image = torch.stack([s.image for s in samples])
    labels = torch.stack([s.labels for s in samples]).float()
    masks = mask_valid = None
    if any(s.masks is not None for s in samples):
        num_classes, (height, width) = labels.shape[1], image.shape[-2:]
        empty = torch.zeros(num_classes, height, width, dtype=torch.bool)
        masks = torch.stack([s.masks.bool() if s.masks is not None else empty for s in samples])
        mask_valid = torch.tensor([s.masks is not None for s in samples])
    orig_size = None
    if all(s.orig_size is not None for s in samples):
        orig_size = torch.tensor([list(s.orig_size) for s in samples], dtype=torch.long)
    return Batch(
        image=image,
        labels=labels,
        masks=masks,
        mask_valid=mask_valid,
        boxes=_stack_optional(samples, "boxes"),
        box_labels=_stack_optional(samples, "box_labels"),
        difficult=_stack_optional(samples, "difficult"),
        keypoints=_stack_optional(samples, "keypoints"),
        ids=[s.id for s in samples],
        orig_size=orig_size,
    )
