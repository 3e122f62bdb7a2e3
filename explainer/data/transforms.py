"""Joint image / box / mask pipelines on torchvision transforms v2.

A dataset decodes an image and its annotations in the image's own pixel coordinates into a
:class:`RawSample`; :class:`SampleTransform` then resizes (and, for training, augments) the image, its
boxes, its part keypoints and its masks together with ``torchvision.transforms.v2`` and ``tv_tensors``,
normalises the image and returns the typed :class:`~explainer.data.batch.Sample`. Boxes, keypoints and
masks therefore follow every resize, crop, flip and rotation.

Geometry conventions (the same as digit scenes): a box ``(x0, y0, x1, y1)`` is in continuous pixel
coordinates with ``x1`` / ``y1`` exclusive, so the box of pixel columns ``a..b`` is ``(a, ., b + 1, .)``.
Image resizes are bilinear with antialiasing; mask resizes are nearest-neighbour at pixel centres
(``NEAREST_EXACT``), so after a resize a mask holds exactly the pixels whose centres fall inside the
scaled region, in agreement with the scaled boxes. Keypoints are points in the same continuous
coordinates (a flip maps ``x`` to ``W - x``, as for box corners); a keypoint that leaves the image (a crop,
a rotation) becomes NaN, i.e. not visible.

Resize modes:
    * ``stretch``: ``Resize((s, s))`` without keeping the aspect ratio (the published presets).
    * ``shorter_crop``: the shorter side to ``s``, then a centre crop of ``s x s``; boxes are clipped to
      the crop and boxes left with no area are dropped (the image-level labels are kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from explainer.data.batch import Sample
from explainer.ops import IMAGENET_MEAN, IMAGENET_STD

ResizeMode = Literal["stretch", "shorter_crop"]
RESIZE_MODES: tuple[str, ...] = ("stretch", "shorter_crop")


@dataclass
class RawSample:
    """A decoded image with annotations in its own pixel coordinates (before any resize).

    Args:
        image: ``[3, H, W]`` uint8 RGB.
        labels: ``[C]`` float multi-hot labels.
        boxes: ``[n, 4]`` float ``(x0, y0, x1, y1)``, 0-based, ``x1`` / ``y1`` exclusive.
        box_labels: ``[n]`` long class index per box.
        difficult: ``[n]`` bool flag per box.
        masks: optional ``[k, H, W]`` bool or 0/1 uint8 masks, one per class in ``mask_classes``; ``None`` when the
            image has no mask ground truth (``k = 0`` means "has ground truth, no class present").
        mask_classes: ``[k]`` long, the distinct class index of each mask channel.
        id: the image's identifier.
        keypoints: optional ``[n, P, 2]`` float ``(x, y)`` part locations per box (NaN: not visible).
    """

    image: Tensor
    labels: Tensor
    boxes: Tensor
    box_labels: Tensor
    difficult: Tensor
    masks: Tensor | None = None
    mask_classes: Tensor | None = None
    id: str = ""
    keypoints: Tensor | None = None


class _Resize(v2.Transform):
    """Resizes images and boxes bilinearly (antialiased) and masks nearest-neighbour at pixel centres."""

    def __init__(self, size: list[int]) -> None:
        super().__init__()
        self.size = size

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return self._call_kernel(F.resize, inpt, self.size, interpolation=InterpolationMode.NEAREST_EXACT)
        return self._call_kernel(F.resize, inpt, self.size, interpolation=InterpolationMode.BILINEAR, antialias=True)


def _clip_boxes(boxes: tv_tensors.BoundingBoxes) -> tuple[tv_tensors.BoundingBoxes, Tensor]:
    """Clips XYXY boxes to their canvas and drops those left without area; returns them and the keep mask."""
    height, width = boxes.canvas_size
    plain = boxes.as_subclass(Tensor).reshape(-1, 4)
    plain = torch.stack(
        [
            plain[:, 0].clamp(0, width),
            plain[:, 1].clamp(0, height),
            plain[:, 2].clamp(0, width),
            plain[:, 3].clamp(0, height),
        ],
        dim=1,
    )
    keep = (plain[:, 2] > plain[:, 0]) & (plain[:, 3] > plain[:, 1])
    return tv_tensors.wrap(plain[keep], like=boxes), keep


def _points_as_boxes(points: Tensor, canvas_size: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    """``[n, P, 2]`` points as zero-area XYXY boxes (unclamped), so they share the boxes' geometry exactly."""
    flat = points.to(torch.float32).reshape(-1, 2)
    return tv_tensors.BoundingBoxes(
        torch.cat([flat, flat], dim=1), format="XYXY", canvas_size=canvas_size, clamping_mode=None
    )


def _boxes_as_points(boxes: tv_tensors.BoundingBoxes, shape: tuple[int, ...]) -> Tensor:
    """Back to ``shape`` (``[n, P, 2]``) points; those outside the canvas become NaN (not visible)."""
    height, width = boxes.canvas_size
    plain = boxes.as_subclass(Tensor).reshape(-1, 4)
    points = (plain[:, :2] + plain[:, 2:]) / 2  # the centre: exact under flips and rotations
    inside = (points[:, 0] >= 0) & (points[:, 0] <= width) & (points[:, 1] >= 0) & (points[:, 1] <= height)
    return points.masked_fill(~inside[:, None], float("nan")).reshape(shape)


class SampleTransform:
    """Resizes, optionally augments and normalises a :class:`RawSample` into a :class:`Sample`.

    The pipeline is ``resize -> [flip -> rotation -> colour jitter] -> float -> normalise`` (the bracket only
    with ``augment=True``); the image, its boxes, its keypoints and its masks go through every geometric step
    together.

    Args:
        image_size: side ``s`` of the square output.
        resize: ``stretch`` (``Resize((s, s))``) or ``shorter_crop`` (shorter side to ``s``, centre crop).
        augment: apply the random augmentations (training only).
        mean: normalisation mean (RGB, in [0, 1]); also the fill colour of rotated-in corners.
        std: normalisation standard deviation.
        hflip: probability of a horizontal flip (with ``augment``).
        rotation: largest rotation in degrees, drawn uniformly from ``[-rotation, rotation]`` (with
            ``augment``); boxes become the axis-aligned boxes around their rotated corners.
        colour_jitter: brightness, contrast and saturation jitter strength (hue gets a tenth of it).
    """

    def __init__(
        self,
        image_size: int = 224,
        resize: ResizeMode = "stretch",
        augment: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        hflip: float = 0.5,
        rotation: float = 10.0,
        colour_jitter: float = 0.2,
    ) -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode '{resize}'; expected one of {RESIZE_MODES}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = int(image_size)
        self.resize = resize
        self.augment = augment
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        size = self.image_size
        self.geometry = v2.Compose(
            [_Resize([size, size])] if resize == "stretch" else [_Resize([size]), v2.CenterCrop(size)]
        )
        steps: list[v2.Transform] = []
        if augment:
            if hflip > 0:
                steps.append(v2.RandomHorizontalFlip(hflip))
            if rotation > 0:
                fill = {tv_tensors.Image: [255.0 * m for m in self.mean], tv_tensors.Mask: 0, "others": 0}
                steps.append(v2.RandomRotation(rotation, interpolation=InterpolationMode.BILINEAR, fill=fill))
            if colour_jitter > 0:
                steps.append(v2.ColorJitter(colour_jitter, colour_jitter, colour_jitter, min(0.5, colour_jitter / 10)))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        self.pipeline = v2.Compose(steps)  # after the resize: augmentation, dtype and normalisation

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size}, resize='{self.resize}', augment={self.augment})"

    def __call__(self, raw: RawSample) -> Sample:
        """Transforms one raw sample.

        Args:
            raw: the decoded sample.

        Returns:
            The sample at ``image_size x image_size``, with boxes clipped to the image (boxes left without
            area dropped) and ``masks`` expanded to ``[C, s, s]`` bool when the raw sample has masks.
        """
        height, width = raw.image.shape[-2:]
        boxes_in = raw.boxes.to(torch.float32).reshape(-1, 4)
        inputs: dict[str, Any] = {
            "image": tv_tensors.Image(raw.image),
            "boxes": tv_tensors.BoundingBoxes(boxes_in, format="XYXY", canvas_size=(height, width)),
        }
        has_mask_channels = raw.masks is not None and raw.masks.shape[0] > 0
        if has_mask_channels:
            inputs["masks"] = tv_tensors.Mask(raw.masks.to(torch.uint8))
        keypoints = None
        if raw.keypoints is not None:
            keypoints = raw.keypoints.to(torch.float32)
            if keypoints.ndim != 3 or keypoints.shape[0] != boxes_in.shape[0] or keypoints.shape[2] != 2:
                raise ValueError(
                    f"keypoints must be [n, P, 2] for the {boxes_in.shape[0]} boxes of '{raw.id}', "
                    f"got {tuple(keypoints.shape)}"
                )
            inputs["keypoints"] = _points_as_boxes(keypoints, (height, width))
        box_labels = raw.box_labels.long().reshape(-1)
        difficult = raw.difficult.bool().reshape(-1)
        # boxes cropped away are dropped before the augmentation can rotate them back into the image
        out = self.geometry(inputs)
        out["boxes"], keep = _clip_boxes(out["boxes"])
        box_labels, difficult = box_labels[keep], difficult[keep]
        if keypoints is not None:
            keypoints = _boxes_as_points(out["keypoints"], keypoints.shape)[keep]
            out["keypoints"] = _points_as_boxes(keypoints, out["keypoints"].canvas_size)
        out = self.pipeline(out)
        image = out["image"].as_subclass(Tensor).contiguous()
        out_h, out_w = image.shape[-2:]
        boxes, keep = _clip_boxes(out["boxes"])
        boxes = boxes.as_subclass(Tensor)
        if keypoints is not None:
            keypoints = _boxes_as_points(out["keypoints"], keypoints.shape)[keep]

        masks = None
        if raw.masks is not None:
            masks = torch.zeros(raw.labels.shape[0], out_h, out_w, dtype=torch.bool)
            if has_mask_channels:
                masks[raw.mask_classes.long()] = out["masks"].as_subclass(Tensor).bool()
        return Sample(
            image=image,
            labels=raw.labels.float(),
            masks=masks,
            boxes=boxes,
            box_labels=box_labels[keep],
            difficult=difficult[keep],
            keypoints=keypoints,
            id=raw.id,
            orig_size=(int(height), int(width)),
        )


__all__ = ["RESIZE_MODES", "RawSample", "ResizeMode", "SampleTransform"]
