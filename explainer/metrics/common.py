"""Helpers shared by the map-based metrics: input checks, resizing, and ground truth from a :class:`Batch`.

Conventions (see :mod:`explainer.metrics`): maps are ``[B, K, H, W]`` for class indices ``classes``
``[B, K]`` (``-1`` = padding); ground truth comes from a :class:`~explainer.data.batch.Batch`. Boxes are
``(x0, y0, x1, y1)`` in pixels of the batch image with ``x1, y1`` exclusive; a pixel belongs to a box when
its centre ``(j + 0.5, i + 0.5)`` lies inside, which for integer coordinates is exactly the pixels
``x0 <= j < x1``, ``y0 <= i < y1`` and for scaled (fractional) coordinates is the natural rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from explainer.data.batch import Batch
from explainer.ops import check_activation

GroundTruth = Literal["masks", "boxes"]
SOURCES = ("masks", "boxes")


# -- input checks -------------------------------------------------------------------------------------


def check_maps(maps: Tensor, classes: Tensor, name: str = "maps") -> None:
    """Checks that ``maps`` is ``[B, K, H, W]`` and ``classes`` the matching ``[B, K]`` integer tensor.

    Args:
        maps: the attribution maps.
        classes: their class indices (``-1`` = padding).
        name: how the maps are called in the error message.
    """
    if not isinstance(maps, Tensor) or maps.ndim != 4:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"{name} must be a [B, K, H, W] tensor (one map per asked class), got {shape}")
    if not isinstance(classes, Tensor) or classes.ndim != 2 or tuple(classes.shape) != tuple(maps.shape[:2]):
        shape = tuple(classes.shape) if isinstance(classes, Tensor) else type(classes).__name__
        raise ValueError(
            f"classes must be a [B, K] = {tuple(maps.shape[:2])} tensor of class indices matching {name}, "
            f"got {shape}; build it with explainer.methods.present_classes(labels)"
        )
    if classes.dtype.is_floating_point or classes.dtype == torch.bool:
        raise TypeError(f"classes must hold integer class indices, got {classes.dtype}")


def check_source(source: str) -> None:
    """Raises a clear error for an unknown ground-truth source."""
    if source not in SOURCES:
        raise ValueError(f"unknown ground-truth source '{source}'; use one of {SOURCES}")


def sanitize_maps(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Replaces non-finite values by 0 and reports which maps had any.

    Args:
        maps: ``[B, K, H, W]`` maps of any dtype.

    Returns:
        ``(clean, nonfinite)``: the maps as a float tensor (at least float32) without NaN / inf, and a
        ``[B, K]`` bool tensor, True where the map had a non-finite value.
    """
    if not maps.dtype.is_floating_point or maps.dtype in (torch.float16, torch.bfloat16):
        maps = maps.float()
    finite = torch.isfinite(maps)
    nonfinite = ~finite.flatten(2).all(-1)
    return torch.where(finite, maps, torch.zeros((), dtype=maps.dtype, device=maps.device)), nonfinite


def constant_maps(maps: Tensor) -> Tensor:
    """``[B, K]`` bool: True where a ``[B, K, H, W]`` map has a single value (no argmax, no ranking)."""
    flat = maps.flatten(2)
    return flat.amax(-1) == flat.amin(-1)


def resize_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (``align_corners=False``) of ``[B, K, h, w]`` maps to ``size``; a no-op if equal."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def image_sizes(batch: Batch) -> Tensor:
    """``[B, 2]`` long ``(H, W)`` of the original images; the batch image size where unknown."""
    if batch.orig_size is not None:
        return batch.orig_size.to(device=batch.image.device, dtype=torch.long)
    height, width = batch.image.shape[-2:]
    return torch.tensor([[height, width]], device=batch.image.device).expand(len(batch), 2)


# -- resizing each image of a batch to its own size ---------------------------------------------------


def _bilinear_weights(in_size: int, out_sizes: Tensor, out_max: int, dtype: torch.dtype) -> Tensor:
    """``[B, out_max, in_size]`` matrices of 1-D bilinear interpolation (``align_corners=False``).

    Row ``o`` of image ``b`` interpolates output pixel ``o`` of a length ``out_sizes[b]`` signal; rows at or
    beyond ``out_sizes[b]`` are zero. Same source-index rule as :func:`torch.nn.functional.interpolate`.
    """
    device = out_sizes.device
    out = torch.arange(out_max, device=device, dtype=torch.float64)
    scale = in_size / out_sizes.to(torch.float64).unsqueeze(1)  # [B, 1]
    src = ((out + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    lam = (src - i0).clamp(0, 1)
    weights = torch.zeros(out_sizes.shape[0], out_max, in_size, device=device, dtype=torch.float64)
    weights.scatter_add_(2, i0.unsqueeze(2), (1 - lam).unsqueeze(2))
    weights.scatter_add_(2, i1.unsqueeze(2), lam.unsqueeze(2))
    weights *= (out.unsqueeze(0) < out_sizes.unsqueeze(1)).unsqueeze(2)
    return weights.to(dtype)


def resize_maps_each(maps: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear resize of each image's maps to its own size, in one batched operation.

    The maps of a batch share one size but the original images do not (VOC, COCO). Interpolation is
    separable, so image ``b`` becomes ``R_y[b] @ maps[b] @ R_x[b]^T`` with 1-D interpolation matrices;
    all images are done by two batched matrix products into a ``[B, K, H_max, W_max]`` canvas. The
    result equals :func:`torch.nn.functional.interpolate` per image up to float rounding.

    Args:
        maps: ``[B, K, h, w]`` float maps.
        sizes: ``[B, 2]`` long ``(H, W)`` target size of each image.

    Returns:
        ``(resized, inside)``: ``[B, K, H_max, W_max]`` maps (zero outside each image) and the ``[B, 1,
        H_max, W_max]`` bool canvas mask of each image's extent.
    """
    sizes = sizes.to(maps.device)
    if bool((sizes == sizes[:1]).all()):  # one size: the library routine, exactly
        size = (int(sizes[0, 0]), int(sizes[0, 1]))
        inside = torch.ones(maps.shape[0], 1, *size, dtype=torch.bool, device=maps.device)
        return resize_maps(maps, size), inside
    h_max, w_max = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    rows = _bilinear_weights(maps.shape[-2], sizes[:, 0], h_max, maps.dtype)  # [B, H_max, h]
    cols = _bilinear_weights(maps.shape[-1], sizes[:, 1], w_max, maps.dtype)  # [B, W_max, w]
    resized = rows.unsqueeze(1) @ maps @ cols.unsqueeze(1).transpose(-1, -2)
    inside = _canvas_inside(sizes, h_max, w_max)
    return resized, inside


def _canvas_inside(sizes: Tensor, h_max: int, w_max: int) -> Tensor:
    ys = torch.arange(h_max, device=sizes.device)
    xs = torch.arange(w_max, device=sizes.device)
    inside = (ys.view(1, -1, 1) < sizes[:, 0].view(-1, 1, 1)) & (xs.view(1, 1, -1) < sizes[:, 1].view(-1, 1, 1))
    return inside.unsqueeze(1)


def resize_masks_each(masks: Tensor, sizes: Tensor) -> Tensor:
    """Nearest-neighbour resize (pixel centres, like ``mode="nearest-exact"``) of each image's masks.

    Args:
        masks: ``[B, K, h, w]`` bool masks.
        sizes: ``[B, 2]`` long ``(H, W)`` target size of each image.

    Returns:
        ``[B, K, H_max, W_max]`` bool masks, False outside each image's extent.
    """
    sizes = sizes.to(masks.device)
    h_in, w_in = masks.shape[-2:]
    h_max, w_max = int(sizes[:, 0].max()), int(sizes[:, 1].max())

    def source_index(in_size: int, out_sizes: Tensor, out_max: int) -> Tensor:
        # floor((o + 0.5) * in / out), in exact integer arithmetic
        out = torch.arange(out_max, device=masks.device)
        src = torch.div((2 * out + 1) * in_size, 2 * out_sizes.unsqueeze(1), rounding_mode="floor")
        return src.clamp(0, in_size - 1)  # [B, out_max]

    rows = source_index(h_in, sizes[:, 0], h_max)
    cols = source_index(w_in, sizes[:, 1], w_max)
    batch_k = masks.shape[1]
    out = masks.gather(2, rows.view(-1, 1, h_max, 1).expand(-1, batch_k, -1, w_in))
    out = out.gather(3, cols.view(-1, 1, 1, w_max).expand(-1, batch_k, h_max, -1))
    return out & _canvas_inside(sizes, h_max, w_max)


# -- ground truth from a batch ------------------------------------------------------------------------


def _need(batch: Batch, source: str) -> None:
    check_source(source)
    if source == "masks" and batch.masks is None:
        raise ValueError(
            "the batch has no masks (Batch.masks is None): this data module yields no segmentation ground "
            "truth; use source='boxes' or a data module with masks"
        )
    if source == "boxes" and (batch.boxes is None or batch.box_labels is None):
        raise ValueError(
            "the batch has no boxes (Batch.boxes is None): this data module yields no boxes; use "
            "source='masks' or a data module with boxes"
        )


def _box_slots(batch: Batch, classes: Tensor, exclude_difficult: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The boxes of the asked classes: ``(boxes [n, 4], slot [n], image [n])``.

    ``slot = b * K + k`` where ``classes[b, k]`` is the box's class; boxes of classes not asked are dropped.
    """
    device = classes.device
    counts = torch.tensor([len(b) for b in batch.boxes], device=device)
    boxes = torch.cat([b.reshape(-1, 4) for b in batch.boxes]).to(device=device, dtype=torch.float64)
    labels = torch.cat([lab.reshape(-1) for lab in batch.box_labels]).to(device=device, dtype=torch.long)
    image = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
    keep = torch.ones_like(labels, dtype=torch.bool)
    if exclude_difficult and batch.difficult is not None:
        keep = ~torch.cat([d.reshape(-1) for d in batch.difficult]).to(device=device, dtype=torch.bool)
    match = (classes[image] == labels.unsqueeze(1)) & (classes[image] >= 0)  # [n, K]
    keep &= match.any(1)
    slot = image * classes.shape[1] + match.to(torch.int8).argmax(1)
    return boxes[keep], slot[keep], image[keep]


def box_counts(batch: Batch, classes: Tensor, exclude_difficult: bool = False) -> Tensor:
    """``[B, K]`` long: how many boxes each asked class has in each image.

    Args:
        batch: a batch with boxes.
        classes: ``[B, K]`` class indices (``-1`` = padding, count 0).
        exclude_difficult: count only boxes not flagged "difficult".
    """
    _need(batch, "boxes")
    _, slot, _ = _box_slots(batch, classes, exclude_difficult)
    counts = torch.zeros(classes.numel(), dtype=torch.long, device=classes.device)
    counts.index_add_(0, slot, torch.ones_like(slot))
    return counts.view_as(classes)


def rasterize_boxes(
    batch: Batch, classes: Tensor, size: tuple[int, int] | None = None, exclude_difficult: bool = False
) -> Tensor:
    """The union of each asked class's boxes as ``[B, K, H, W]`` bool masks (vectorised over all boxes).

    Args:
        batch: a batch with boxes (in pixels of ``batch.image``).
        classes: ``[B, K]`` class indices (``-1`` = padding, all False).
        size: ``(H, W)`` of the masks; box coordinates are scaled from the batch image size to it.
        exclude_difficult: leave out boxes flagged "difficult".
    """
    _need(batch, "boxes")
    height, width = batch.image.shape[-2:]
    out_h, out_w = size if size is not None else (height, width)
    boxes, slot, _ = _box_slots(batch, classes, exclude_difficult)
    device = classes.device
    boxes = boxes * torch.tensor([out_w / width, out_h / height] * 2, device=device, dtype=boxes.dtype)
    xs = torch.arange(out_w, device=device, dtype=boxes.dtype) + 0.5
    ys = torch.arange(out_h, device=device, dtype=boxes.dtype) + 0.5
    in_x = (xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])  # [n, W]
    in_y = (ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4])  # [n, H]
    cover = (in_y.unsqueeze(2) & in_x.unsqueeze(1)).to(torch.int32)  # [n, H, W]
    union = torch.zeros(classes.numel(), out_h, out_w, dtype=torch.int32, device=device)
    union.index_add_(0, slot, cover)
    return (union > 0).view(*classes.shape, out_h, out_w)


def gt_masks(
    batch: Batch,
    classes: Tensor,
    source: GroundTruth = "masks",
    size: tuple[int, int] | None = None,
    exclude_difficult: bool = False,
) -> Tensor:
    """Ground-truth masks of the asked classes.

    Args:
        batch: the batch the maps were computed on.
        classes: ``[B, K]`` class indices (``-1`` = padding, all False).
        source: ``"masks"`` (``batch.masks``; images without masks give all False, see :func:`gt_valid`) or
            ``"boxes"`` (the union of the class's boxes, rasterised by pixel centres).
        size: ``(H, W)`` of the result (default: the batch image size); masks are resized by nearest
            neighbour, box coordinates are scaled.
        exclude_difficult: with ``source="boxes"``, leave out boxes flagged "difficult".

    Returns:
        ``[B, K, H, W]`` bool.
    """
    _need(batch, source)
    classes = classes.to(batch.image.device)
    if source == "boxes":
        return rasterize_boxes(batch, classes, size, exclude_difficult)
    masks = batch.masks
    rows = torch.arange(classes.shape[0], device=classes.device).unsqueeze(1)
    picked = masks[rows, classes.clamp(min=0)] & (classes >= 0).view(*classes.shape, 1, 1)
    if size is not None and tuple(size) != tuple(picked.shape[-2:]):
        sizes = torch.tensor([list(size)], device=classes.device).expand(classes.shape[0], 2)
        picked = resize_masks_each(picked, sizes)
    return picked


def gt_valid(batch: Batch, classes: Tensor, source: GroundTruth = "masks") -> Tensor:
    """``[B, K]`` bool: the asked class is real (not padding) and has ground truth from ``source``.

    With masks, an image must have ``mask_valid`` (VOC has masks for few images); with boxes, the class
    must have at least one box.
    """
    _need(batch, source)
    classes = classes.to(batch.image.device)
    valid = classes >= 0
    if source == "masks":
        if batch.mask_valid is not None:
            valid = valid & batch.mask_valid.to(valid.device).view(-1, 1)
        return valid
    return valid & (box_counts(batch, classes) > 0)


# -- the classifier side ------------------------------------------------------------------------------


def class_probabilities(logits: Tensor, activation: str) -> Tensor:
    """Probabilities from logits: ``sigmoid`` (multi-label) or ``softmax`` over classes (single-label)."""
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=-1)


def class_log_probabilities(logits: Tensor, activation: str) -> Tensor:
    """Log-probabilities from logits, computed stably (``logsigmoid`` or ``log_softmax``)."""
    return F.logsigmoid(logits) if activation == "sigmoid" else torch.log_softmax(logits, dim=-1)


@torch.no_grad()
def forward_in_chunks(
    classifier: nn.Module, make_inputs: Callable[[Tensor], Tensor], total: int, chunk_size: int, device: torch.device
) -> Tensor:
    """Logits of ``total`` generated inputs, in forward passes of at most ``chunk_size`` images.

    Args:
        classifier: maps ``[n, 3, H, W]`` images to ``[n, C]`` logits.
        make_inputs: builds the images for a 1-D tensor of input indices.
        total: the number of inputs.
        chunk_size: the largest forward pass.
        device: where the index tensors live.

    Returns:
        ``[total, C]`` logits.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    outputs = []
    for start in range(0, total, chunk_size):
        index = torch.arange(start, min(total, start + chunk_size), device=device)
        outputs.append(classifier(make_inputs(index)))
    if not outputs:
        return torch.zeros(0, 0, device=device)
    return torch.cat(outputs)


class ClassifierMetric(Metric):
    """Base of the metrics that query a classifier (saliency, class specificity, insertion / deletion).

    The classifier is kept *outside* the module tree: it is not part of the metric's ``state_dict`` (a
    checkpoint does not store it twice) and ``metric.to(device)`` does not move it. It is used as it is:
    put it in eval mode on the device of the images (a
    :class:`~explainer.classifiers.FrozenClassifier` always is in eval mode). Forward passes run under
    ``torch.no_grad`` in chunks of ``chunk_size`` images.

    Args:
        classifier: maps ``[n, 3, H, W]`` normalised images to ``[n, C]`` logits.
        activation: ``"sigmoid"`` (multi-label, independent class probabilities) or ``"softmax"``.
        chunk_size: the largest forward pass.
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, classifier: nn.Module, activation: str = "sigmoid", chunk_size: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not callable(classifier):
            raise TypeError(f"classifier must be a callable nn.Module giving logits, got {type(classifier).__name__}")
        check_activation(activation)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.__dict__["classifier"] = classifier  # a plain reference, not a registered submodule
        self.activation = activation
        self.chunk_size = chunk_size

    def _add(self, name: str, value: Tensor) -> None:
        state = getattr(self, name)
        setattr(self, name, state + value.to(device=state.device, dtype=state.dtype))


def maps_to_unit_range(maps: Tensor, size: tuple[int, int], name: str = "maps") -> tuple[Tensor, Tensor]:
    """Masks for perturbation metrics: non-finite values set to 0, resized bilinearly to ``size``, checked
    to lie in [0, 1].

    Returns:
        ``(masks, nonfinite)``: ``[B, K, H, W]`` masks and ``[B, K]`` bool flags of non-finite input.
    """
    maps, nonfinite = sanitize_maps(maps)
    maps = resize_maps(maps, size)
    low, high = float(maps.min()), float(maps.max())
    if low < -1e-5 or high > 1 + 1e-5:
        raise ValueError(
            f"{name} must lie in [0, 1] (they multiply the image), got values in [{low:.4g}, {high:.4g}]; "
            "normalise them first, e.g. explainer.metrics.normalize_maps(maps, 'max')"
        )
    return maps.clamp(0, 1), nonfinite
