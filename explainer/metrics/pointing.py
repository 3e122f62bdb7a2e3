"""The pointing game (TorchRay protocol) and its energy-based variant.

Protocol (Zhang et al.'s pointing game as benchmarked by TorchRay, VOC07 test / COCO14 val):

* the point is the argmax of the map resized bilinearly to the **original** image size
  (``batch.orig_size``; the batch image size where unknown); ties go to the first pixel in row-major order
  (ties of the resized map are exact only up to float rounding, as in any implementation);
* a point hits when a disc of radius ``r`` around it touches the ground truth, strictly: some
  ground-truth pixel ``q`` has ``|p - q|^2 < r^2``. By default ``r`` is chosen **per image**: TorchRay's
  15 px when the image's original shorter side is at least 224 px, else ``15 / 224`` of that shorter side
  (64 px digit scenes: 4.3 px); ``tolerance`` fixes it, ``tolerance_relative`` scales it with every image;
* ground truth: ``source="boxes"`` uses the union of all the class's boxes (difficult ones included),
  scaled from the batch image back to the original size, which inverts a plain resize exactly (the
  transform the paper uses; a crop or padding cannot be inverted from the batch); a class whose boxes are
  all "difficult" is skipped. ``source="masks"`` uses the class masks of the batch, resized to the
  original size by nearest neighbour (COCO instance masks, digit scenes); an empty mask is skipped;
* accuracy = mean over classes of ``hits / (hits + misses)``; the "difficult" subset repeats it on the
  image-class pairs of a published list (``difficult_list``, TorchRay's file format, see
  :mod:`explainer.metrics.difficult`) or, by default, on the pairs whose ground truth covers less than
  ``difficult_coverage`` (1/4) of the image while another class is present (the rule behind the
  excitation-backprop authors' list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from explainer.data.batch import Batch
from explainer.metrics.common import (
    GroundTruth,
    _box_slots,
    box_counts,
    check_maps,
    check_source,
    constant_maps,
    gt_masks,
    gt_valid,
    image_sizes,
    resize_maps,
    resize_maps_each,
    sanitize_maps,
)
from explainer.metrics.difficult import DifficultList, difficult_pairs

TORCHRAY_TOLERANCE = 15.0
"""TorchRay's hit radius in pixels, meant for images whose shorter side is at least 224 px."""
TORCHRAY_SIZE = 224
"""The image size TorchRay's 15 px belong to; smaller images get ``15 / 224`` of their shorter side."""


def argmax_points(maps: Tensor, sizes: Tensor) -> Tensor:
    """The argmax of each map after a bilinear resize to its image's size.

    Args:
        maps: ``[B, K, h, w]`` finite maps.
        sizes: ``[B, 2]`` long ``(H, W)`` original image sizes.

    Returns:
        ``[B, K, 2]`` long ``(y, x)`` points in original pixels (first maximum in row-major order).
    """
    resized, inside = resize_maps_each(maps, sizes)
    resized = resized.masked_fill(~inside, float("-inf"))
    width = resized.shape[-1]
    flat = resized.flatten(2).argmax(-1)
    return torch.stack([flat // width, flat % width], dim=-1)


def centre_points(sizes: Tensor, num: int = 1) -> Tensor:
    """The centre baseline of the pointing game: ``(H // 2, W // 2)`` of each image.

    Args:
        sizes: ``[B, 2]`` long ``(H, W)`` original image sizes (see :func:`image_sizes`).
        num: how many points per image (one per asked class, ``K``).

    Returns:
        ``[B, num, 2]`` long ``(y, x)`` points, for :meth:`PointingGame.update_points`.
    """
    return (sizes.to(torch.long) // 2).unsqueeze(1).expand(-1, num, 2).clone()


def _nearest_source(in_size: int, out_sizes: Tensor, coords: Tensor) -> Tensor:
    """Source index of output pixels ``coords`` under a nearest resize (pixel centres) to ``out_sizes``."""
    # floor((c + 0.5) * in / out) in exact integer arithmetic (float rounding would misplace c = 8, 12 / 17)
    return torch.div((2 * coords + 1) * in_size, 2 * out_sizes, rounding_mode="floor").clamp(0, in_size - 1)


def _nonempty_at_size(gt: Tensor, sizes: Tensor) -> Tensor:
    """``[B, K]``: does the mask keep a pixel after a nearest resize to each image's size? (Downsizing can
    drop rows and columns; only those some output pixel samples count.)"""
    height, width = gt.shape[-2:]
    used = []
    for axis, in_size in ((0, height), (1, width)):
        coords = torch.arange(int(sizes[:, axis].max()), device=gt.device).expand(sizes.shape[0], -1)
        source = _nearest_source(in_size, sizes[:, axis : axis + 1], coords)
        source = torch.where(coords < sizes[:, axis : axis + 1], source, in_size)  # beyond the image: dropped
        hit = torch.zeros(sizes.shape[0], in_size + 1, dtype=torch.bool, device=gt.device)
        used.append(hit.scatter_(1, source, True)[:, :in_size])
    kept = gt & used[0].view(-1, 1, height, 1) & used[1].view(-1, 1, 1, width)
    return kept.flatten(2).any(-1)


def _mask_hits(points: Tensor, gt: Tensor, sizes: Tensor, radius: Tensor) -> Tensor:
    """Disc-versus-mask test at the original size without building original-size masks.

    Only the pixels of the disc matter: their original-image coordinates are mapped back to the mask's
    pixels by the nearest-resize rule and looked up, ``(2 r + 1)^2`` lookups per pair.
    """
    batch_size, num, height, width = gt.shape
    reach = int(torch.ceil(radius.max()).item()) if radius.numel() else 0
    offsets = torch.arange(-reach, reach + 1, device=gt.device)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    in_disc = (dy**2 + dx**2).to(torch.float64).unsqueeze(0) < (radius**2).unsqueeze(1)  # [B, D]
    ys = points[..., 0:1] + dy  # [B, K, D]
    xs = points[..., 1:2] + dx
    orig_h, orig_w = sizes[:, 0].view(-1, 1, 1), sizes[:, 1].view(-1, 1, 1)
    inside = (ys >= 0) & (ys < orig_h) & (xs >= 0) & (xs < orig_w) & in_disc.unsqueeze(1)
    rows = _nearest_source(height, orig_h, ys)
    cols = _nearest_source(width, orig_w, xs)
    values = gt.reshape(batch_size, num, -1).gather(2, rows * width + cols)
    return (values & inside).any(-1)


def _add_per_class(state: Tensor, classes: Tensor, select: Tensor, values: Tensor | None = None) -> None:
    """Adds ``values`` (default 1) of the selected pairs to a per-class state, on the state's device."""
    index = classes[select]
    source = torch.ones_like(index, dtype=state.dtype) if values is None else values[select].to(state.dtype)
    total = torch.zeros(state.shape[0], dtype=state.dtype, device=index.device).index_add_(0, index, source)
    state += total.to(state.device)


class PointingGame(Metric):
    """Pointing-game accuracy with per-class hit and miss counts (sum-reduced, DDP-safe).

    See the module docstring for the protocol. Maps that contain non-finite values (replaced by 0) or are
    constant have no meaningful maximum: they count as misses and in ``invalid`` (TorchRay's argmax would
    take pixel 0 of a constant map, which may hit).

    Hit radius ``r`` of an image whose original shorter side is ``s`` (pixels of the original image):

    * default (``tolerance=None``, ``tolerance_relative=None``): ``r = 15`` if ``s >= 224``, else
      ``r = 15 * s / 224``, decided for every image on its own;
    * ``tolerance=t``: ``r = t`` for every image (TorchRay's ``PointingGame(tolerance=15)``);
    * ``tolerance_relative=f``: ``r = f * s`` for every image.

    Args:
        num_classes: number of classes ``C`` of the data set.
        source: ground truth, ``"boxes"`` (VOC) or ``"masks"`` (COCO, digit scenes).
        tolerance: a fixed hit radius in original-image pixels; ``None`` (default) chooses it per image as
            above.
        tolerance_relative: if set, the radius is this fraction of each original image's shorter side
            instead (``15 / 224`` reproduces 15 px at 224 px and scales it for every size); give at most
            one of ``tolerance`` and ``tolerance_relative``.
        skip_difficult: with boxes, skip a class whose boxes are all flagged "difficult".
        difficult_coverage: coverage threshold of the "difficult" subset's rule (:func:`difficult_pairs`);
            ``None`` disables the rule. Ignored when ``difficult_list`` is given.
        difficult_list: a published per-image list of difficult pairs (a text file in TorchRay's format,
            see :mod:`explainer.metrics.difficult`), matched by ``batch.ids``; read once, here.
        **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).

    Raises:
        FileNotFoundError: ``difficult_list`` does not exist.
        ValueError: a malformed ``difficult_list`` (file, line number and expected format in the message),
            a negative radius, or both radius options given.

    Example:
        >>> metric = PointingGame(num_classes=20)
        >>> classes = present_classes(batch.labels)
        >>> metric.update(method.attribute(batch.image, classes), batch, classes)
        >>> metric.compute()["accuracy"]
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        num_classes: int,
        source: GroundTruth = "boxes",
        tolerance: float | None = None,
        tolerance_relative: float | None = None,
        skip_difficult: bool = True,
        difficult_coverage: float | None = 0.25,
        difficult_list: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_source(source)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if tolerance is not None and tolerance_relative is not None:
            raise ValueError(
                f"give at most one of tolerance ({tolerance}) and tolerance_relative ({tolerance_relative}); "
                "with neither, the radius is 15 px for images of 224 px and more, 15/224 of the shorter side below"
            )
        if (tolerance is not None and tolerance < 0) or (tolerance_relative is not None and tolerance_relative < 0):
            raise ValueError("tolerance and tolerance_relative must be non-negative")
        self.num_classes = num_classes
        self.source = source
        self.tolerance = None if tolerance is None else float(tolerance)
        self.tolerance_relative = tolerance_relative
        self.skip_difficult = skip_difficult
        self.difficult_coverage = difficult_coverage
        self._difficult_list = DifficultList(difficult_list, num_classes) if difficult_list is not None else None
        if self._difficult_list is not None:  # moves with the metric, stays out of its state_dict
            self.register_buffer("_difficult_table", self._difficult_list.table, persistent=False)
        for name in ("hits", "misses", "hits_difficult", "misses_difficult"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("invalid", "skipped", "difficult_unlisted"):
            self.add_state(name, torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @property
    def difficult_source(self) -> str:
        """Where the "difficult" subset comes from: ``"list:<file name>"``, ``"coverage"`` (the rule of
        :func:`difficult_pairs`) or ``"none"`` (no subset). Flags passed to :meth:`update` override it."""
        if self._difficult_list is not None:
            return self._difficult_list.source
        return "coverage" if self.difficult_coverage is not None else "none"

    def radius(self, sizes: Tensor) -> Tensor:
        """Hit radius of each image (see the class docstring).

        Args:
            sizes: ``[B, 2]`` ``(H, W)`` original image sizes.

        Returns:
            ``[B]`` float64 radius in pixels of the original image.
        """
        shorter = sizes.min(1).values.to(torch.float64)
        if self.tolerance_relative is not None:
            return self.tolerance_relative * shorter
        if self.tolerance is not None:
            return torch.full_like(shorter, self.tolerance)
        return torch.where(shorter >= TORCHRAY_SIZE, TORCHRAY_TOLERANCE, shorter * (TORCHRAY_TOLERANCE / TORCHRAY_SIZE))

    def update(self, maps: Tensor, batch: Batch, classes: Tensor, difficult: Tensor | None = None) -> None:
        """Scores one batch.

        Args:
            maps: ``[B, K, h, w]`` maps for ``classes`` (any resolution).
            batch: the batch the maps explain (ground truth, original sizes, ids for a difficult list).
            classes: ``[B, K]`` class indices (``-1`` = padding, ignored).
            difficult: optional ``[B, K]`` bool flags of the "difficult" subset; when omitted they come from
                ``difficult_list`` or the coverage rule (:attr:`difficult_source`).
        """
        check_maps(maps, classes)
        maps, nonfinite = sanitize_maps(maps)
        invalid = nonfinite | constant_maps(maps)
        points = argmax_points(maps, image_sizes(batch))
        self.update_points(points, batch, classes, difficult=difficult, invalid=invalid)

    def update_points(
        self,
        points: Tensor,
        batch: Batch,
        classes: Tensor,
        difficult: Tensor | None = None,
        invalid: Tensor | None = None,
    ) -> None:
        """Scores given points (e.g. :func:`centre_points`) instead of maps.

        Args:
            points: ``[B, K, 2]`` ``(y, x)`` points in original-image pixels.
            batch: the batch (ground truth, original sizes).
            classes: ``[B, K]`` class indices (``-1`` = padding, ignored).
            difficult: optional ``[B, K]`` flags of the "difficult" subset (see :meth:`update`).
            invalid: optional ``[B, K]`` bool: pairs without a valid point (scored as misses).
        """
        device = batch.image.device
        classes = classes.to(device)
        points = points.to(device=device, dtype=torch.long)
        if points.shape != (*classes.shape, 2):
            raise ValueError(f"points must be [B, K, 2] = {(*classes.shape, 2)}, got {tuple(points.shape)}")
        sizes = image_sizes(batch)
        radius = self.radius(sizes)
        eligible = classes >= 0
        if self.source == "boxes":
            eligible &= box_counts(batch, classes, exclude_difficult=self.skip_difficult) > 0
            hit = self._box_hits(points, batch, classes, sizes, radius)
        else:
            eligible &= gt_valid(batch, classes, "masks")
            gt = gt_masks(batch, classes, "masks")
            eligible &= _nonempty_at_size(gt, sizes)
            hit = _mask_hits(points, gt, sizes, radius)
        if invalid is not None:
            invalid = invalid.to(device)
            hit &= ~invalid
            self.invalid += (invalid & eligible).sum().to(self.invalid.device)
        self.skipped += ((classes >= 0) & ~eligible).sum().to(self.skipped.device)
        _add_per_class(self.hits, classes, eligible & hit)
        _add_per_class(self.misses, classes, eligible & ~hit)
        if difficult is None and self._difficult_list is not None:
            table = self._difficult_table.to(device)
            difficult, unlisted = self._difficult_list.lookup(batch.ids, classes, table)
            self.difficult_unlisted += (eligible & unlisted.unsqueeze(1)).sum().to(self.difficult_unlisted.device)
        elif difficult is None and self.difficult_coverage is not None:
            difficult = difficult_pairs(batch, classes, self.source, self.difficult_coverage)
        if difficult is not None:
            hard = eligible & difficult.to(device)
            _add_per_class(self.hits_difficult, classes, hard & hit)
            _add_per_class(self.misses_difficult, classes, hard & ~hit)

    def _box_hits(self, points: Tensor, batch: Batch, classes: Tensor, sizes: Tensor, radius: Tensor) -> Tensor:
        """Exact disc-versus-box test on the pixel grid of the original image, for all boxes at once.

        A box covers the pixel columns ``ceil(x0 - 0.5) <= j < ceil(x1 - 0.5)`` (pixel centres inside, the
        rule of :func:`rasterize_boxes`) and likewise for rows; the nearest covered pixel to the point is the
        point clamped into that range, so the disc touches the box iff that pixel is within the radius.
        """
        boxes, slot, image = _box_slots(batch, classes)
        height, width = batch.image.shape[-2:]
        orig_h, orig_w = sizes[image, 0].to(torch.float64), sizes[image, 1].to(torch.float64)
        x0 = torch.minimum(torch.ceil(boxes[:, 0] * orig_w / width - 0.5).clamp(min=0), orig_w)
        x1 = torch.minimum(torch.ceil(boxes[:, 2] * orig_w / width - 0.5).clamp(min=0), orig_w)
        y0 = torch.minimum(torch.ceil(boxes[:, 1] * orig_h / height - 0.5).clamp(min=0), orig_h)
        y1 = torch.minimum(torch.ceil(boxes[:, 3] * orig_h / height - 0.5).clamp(min=0), orig_h)
        point = points.view(-1, 2)[slot].to(torch.float64)
        near_x = torch.maximum(torch.minimum(point[:, 1], x1 - 1), x0)
        near_y = torch.maximum(torch.minimum(point[:, 0], y1 - 1), y0)
        dist2 = (point[:, 1] - near_x) ** 2 + (point[:, 0] - near_y) ** 2
        box_hit = (x1 > x0) & (y1 > y0) & (dist2 < radius[image] ** 2)
        hits = torch.zeros(classes.numel(), dtype=torch.long, device=classes.device)
        hits.index_add_(0, slot, box_hit.long())
        return (hits > 0).view_as(classes)

    @staticmethod
    def _class_mean(hits: Tensor, misses: Tensor) -> Tensor:
        total = hits + misses
        seen = total > 0
        if not bool(seen.any()):
            return torch.tensor(float("nan"), dtype=torch.float64, device=hits.device)
        return (hits[seen].double() / total[seen].double()).mean()

    def per_class(self, difficult: bool = False) -> Tensor:
        """``[C]`` accuracy of each class (NaN for classes never scored)."""
        hits, misses = (self.hits_difficult, self.misses_difficult) if difficult else (self.hits, self.misses)
        return hits.double() / (hits + misses).double()

    def compute(self) -> dict[str, Tensor]:
        """Returns ``accuracy`` (mean over classes), ``accuracy_difficult`` (NaN without the subset),
        ``hit_rate`` (hits over all scored pairs), ``invalid``, ``skipped`` and ``difficult_unlisted``
        (pair counts; the last: scored pairs of images that ``difficult_list`` does not name, which count in
        the subset as in TorchRay)."""
        total = (self.hits + self.misses).sum().double()
        return {
            "accuracy": self._class_mean(self.hits, self.misses),
            "accuracy_difficult": self._class_mean(self.hits_difficult, self.misses_difficult),
            "hit_rate": self.hits.sum().double() / total if total > 0 else torch.full_like(total, float("nan")),
            "invalid": self.invalid.double(),
            "skipped": self.skipped.double(),
            "difficult_unlisted": self.difficult_unlisted.double(),
        }


class EnergyPointingGame(Metric):
    """Energy-based pointing game: the fraction of positive saliency mass inside the ground truth.

    Scored at the batch image size (maps resized bilinearly to it): ``sum(relu(M) * G) / sum(relu(M))``
    per image-class pair. A map without positive mass, or with non-finite values (replaced by 0), scores
    0 and counts in ``invalid``. Pairs without ground truth (see :func:`gt_valid`, empty masks, classes
    whose boxes are all difficult when ``skip_difficult``) are skipped and counted in ``skipped``.

    Args:
        num_classes: number of classes ``C``.
        source: ground truth, ``"boxes"`` or ``"masks"``.
        skip_difficult: with boxes, skip a class whose boxes are all "difficult".
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self, num_classes: int, source: GroundTruth = "boxes", skip_difficult: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        check_source(source)
        self.num_classes = num_classes
        self.source = source
        self.skip_difficult = skip_difficult
        self.add_state("energy_sum", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("invalid", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, maps: Tensor, batch: Batch, classes: Tensor) -> None:
        """Scores one batch (``maps [B, K, h, w]`` for ``classes [B, K]``, see :class:`PointingGame`)."""
        check_maps(maps, classes)
        device = batch.image.device
        classes = classes.to(device)
        maps, nonfinite = sanitize_maps(maps.to(device))
        maps = resize_maps(maps, tuple(batch.image.shape[-2:]))
        gt = gt_masks(batch, classes, self.source)
        eligible = gt_valid(batch, classes, self.source) & gt.flatten(2).any(-1)
        if self.source == "boxes" and self.skip_difficult:
            eligible &= box_counts(batch, classes, exclude_difficult=True) > 0
        positive = maps.clamp(min=0).flatten(2)
        total = positive.sum(-1)
        inside = (positive * gt.flatten(2)).sum(-1)
        energy = torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)
        invalid = nonfinite | (total <= 0)
        _add_per_class(self.energy_sum, classes, eligible, energy)
        _add_per_class(self.count, classes, eligible)
        self.invalid += (invalid & eligible).sum().to(self.invalid.device)
        self.skipped += ((classes >= 0) & ~eligible).sum().to(self.skipped.device)

    def compute(self) -> dict[str, Tensor]:
        """Returns ``energy`` (mean over image-class pairs), ``energy_class_mean`` (mean over classes of the
        per-class means), ``invalid`` and ``skipped`` (pair counts)."""
        seen = self.count > 0
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.count.device)
        return {
            "energy": self.energy_sum.sum() / self.count.sum() if bool(seen.any()) else nan,
            "energy_class_mean": (self.energy_sum[seen] / self.count[seen]).mean() if bool(seen.any()) else nan,
            "invalid": self.invalid.double(),
            "skipped": self.skipped.double(),
        }
