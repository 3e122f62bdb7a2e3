"""Consistency and stability of part-prototypes (the protocol of Tan, Zhou & Chen, ICML 2024).

For every image and every class present in it that has annotated part keypoints, each prototype of that
class is located by the peak of its activation map, upsampled bilinearly to the image size. A box of side
``box_fraction`` of the image side (72 px at 224 px, i.e. ``72 / 224``) is centred on the peak; part ``p``
*hits* when a visible keypoint of part ``p`` of an object of that class lies inside the box. This gives
each (image, prototype) pair a hit vector over the parts.

* **Consistency**: a prototype is consistent when some part is hit in at least ``threshold`` (80%) of the
  images of its class in which that part is visible; the score is the fraction of consistent prototypes.
* **Stability**: the same images with Gaussian noise (std 0.2, clipped to +-0.25, in normalised space; see
  :func:`prototype_noise`); a prototype's stability is the fraction of its images whose hit vector is
  unchanged; the score is the mean over prototypes.

Both scores count only classes that occurred with keypoints, and both are fractions in ``[0, 1]`` (the
papers report percentages). An image with several objects of the same class counts once, with a part hit
if any of those objects' keypoints of that part is inside the box. Prototypes that are all-zero padding
can be excluded with ``valid`` (their maps have no peak).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric


def prototype_noise(
    images: Tensor, std: float = 0.2, clip: float = 0.25, generator: torch.Generator | None = None
) -> Tensor:
    """Images plus Gaussian noise of ``std`` clipped to ``[-clip, clip]`` (in normalised space).

    Args:
        images: normalised images ``[B, 3, H, W]``.
        std: standard deviation of the noise.
        clip: bound of the noise.
        generator: optional generator on the images' device (seeded noise).
    """
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return images + (noise * std).clamp(-clip, clip)


def _pairs(
    keypoints: list[Tensor], box_labels: list[Tensor], num_classes: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """(image, class) pairs with objects, and per object: its pair index and keypoints ``[N, P, 2]``."""
    counts = torch.tensor([len(b) for b in box_labels], device=device)
    if int(counts.sum()) == 0:
        return None
    obj_img = torch.repeat_interleave(torch.arange(len(box_labels), device=device), counts)
    obj_cls = torch.cat([b.to(device).long() for b in box_labels])
    obj_kp = torch.cat([k.to(device).float() for k in keypoints])
    pair_key, obj_pair = torch.unique(obj_img * num_classes + obj_cls, return_inverse=True)
    return pair_key // num_classes, pair_key % num_classes, obj_pair, obj_kp


def prototype_hits(
    maps: Tensor,
    keypoints: list[Tensor],
    box_labels: list[Tensor],
    image_size: tuple[int, int],
    box_fraction: float = 72 / 224,
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Hit vectors of every prototype on every (image, present class) pair with keypoints.

    Args:
        maps: ``[B, C, k, h, w]`` prototype maps of all classes.
        keypoints: per image ``[n_i, P, 2]`` ``(x, y)`` in pixels of the image (NaN = not visible).
        box_labels: per image ``[n_i]`` class index of each object.
        image_size: ``(H, W)`` of the images.
        box_fraction: box side relative to the image side.

    Returns:
        ``(classes [N], hits [N, k, P] bool, visible [N, P] bool, peaks [N, k, 2] (x, y))`` for the
        ``N`` pairs, or None when no image has objects.
    """
    if maps.ndim != 5:
        raise ValueError(f"maps must be [B, C, k, h, w] prototype maps, got shape {tuple(maps.shape)}")
    batch, num_classes, k = maps.shape[:3]
    if len(keypoints) != batch or len(box_labels) != batch:
        raise ValueError(f"need keypoints and box labels for each of the {batch} images")
    pairs = _pairs(keypoints, box_labels, num_classes, maps.device)
    if pairs is None:
        return None
    pair_img, pair_cls, obj_pair, obj_kp = pairs
    height, width = image_size
    picked = maps[pair_img, pair_cls].float()  # [N, k, h, w]
    up = F.interpolate(picked, size=(height, width), mode="bilinear", align_corners=False)
    flat = up.flatten(2).argmax(-1)  # [N, k]
    peaks = torch.stack([flat % width, flat // width], dim=-1).float() + 0.5  # pixel centres
    half = torch.tensor([box_fraction * width / 2, box_fraction * height / 2], device=maps.device)
    vis_obj = torch.isfinite(obj_kp).all(-1)  # [M, P]
    inside = ((obj_kp[:, None] - peaks[obj_pair][:, :, None]).abs() <= half).all(-1)  # [M, k, P]
    hit_obj = inside & vis_obj[:, None]
    n_pairs, n_parts = len(pair_cls), obj_kp.shape[1]
    hits = torch.zeros(n_pairs, k, n_parts, device=maps.device).index_add_(0, obj_pair, hit_obj.float()) > 0
    visible = torch.zeros(n_pairs, n_parts, device=maps.device).index_add_(0, obj_pair, vis_obj.float()) > 0
    return pair_cls, hits, visible, peaks


class _PrototypeMetric(Metric):
    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        prototypes_per_class: int,
        num_parts: int,
        box_fraction: float = 72 / 224,
        valid: Tensor | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < box_fraction <= 1:
            raise ValueError(f"box_fraction must be in (0, 1], got {box_fraction}")
        self.num_classes, self.k, self.num_parts = num_classes, prototypes_per_class, num_parts
        self.box_fraction = box_fraction
        mask = torch.ones(num_classes, prototypes_per_class, dtype=torch.bool) if valid is None else valid.bool()
        if mask.shape != (num_classes, prototypes_per_class):
            raise ValueError(f"valid must be [{num_classes}, {prototypes_per_class}], got {tuple(mask.shape)}")
        self.register_buffer("valid", mask.clone(), persistent=False)

    def set_valid(self, valid: Tensor) -> None:
        """Marks which prototypes count (e.g. not the zero padding of a class with few locations)."""
        self.valid = valid.bool().to(self.valid.device).clone()
        self._computed = None  # torchmetrics caches compute()

    def _check(self, maps: Tensor, keypoints: list[Tensor]) -> None:
        if maps.ndim != 5 or maps.shape[1:3] != (self.num_classes, self.k):
            raise ValueError(f"maps must be [B, {self.num_classes}, {self.k}, h, w], got shape {tuple(maps.shape)}")
        for kp in keypoints:
            if kp.ndim != 3 or kp.shape[1:] != (self.num_parts, 2):
                raise ValueError(
                    f"keypoints must be [n, {self.num_parts}, 2] per image (num_parts={self.num_parts}), "
                    f"got {tuple(kp.shape)}: set num_parts to the data's keypoints per object"
                )


class PrototypeConsistency(_PrototypeMetric):
    """Fraction of consistent prototypes (see the module docstring).

    Args:
        num_classes: ``C``.
        prototypes_per_class: ``k``.
        num_parts: ``P`` keypoints per object.
        box_fraction: box side relative to the image side (``72 / 224``).
        threshold: the fraction of images in which some part must be hit (0.8).
        valid: optional ``[C, k]`` mask of the prototypes that count.
    """

    def __init__(
        self,
        num_classes: int,
        prototypes_per_class: int,
        num_parts: int,
        box_fraction: float = 72 / 224,
        threshold: float = 0.8,
        valid: Tensor | None = None,
        **kwargs,
    ) -> None:
        super().__init__(num_classes, prototypes_per_class, num_parts, box_fraction, valid, **kwargs)
        self.threshold = threshold
        self.add_state("hits", torch.zeros(num_classes, prototypes_per_class, num_parts), dist_reduce_fx="sum")
        self.add_state("visible", torch.zeros(num_classes, num_parts), dist_reduce_fx="sum")

    def update(
        self, maps: Tensor, keypoints: list[Tensor], box_labels: list[Tensor], image_size: tuple[int, int]
    ) -> None:
        """Adds a batch.

        Args:
            maps: ``[B, C, k, h, w]`` prototype maps.
            keypoints: per image ``[n_i, P, 2]``.
            box_labels: per image ``[n_i]``.
            image_size: ``(H, W)``.
        """
        self._check(maps, keypoints)
        out = prototype_hits(maps, keypoints, box_labels, image_size, self.box_fraction)
        if out is None:
            return
        cls, hits, visible, _ = out
        self.hits.index_add_(0, cls, hits.float())
        self.visible.index_add_(0, cls, visible.float())

    def per_prototype(self) -> Tensor:
        """``[C, k]`` bool: consistent prototypes."""
        ratio = self.hits / self.visible[:, None, :].clamp(min=1)
        return ((ratio >= self.threshold) & (self.visible[:, None, :] > 0)).any(-1)

    def compute(self) -> Tensor:
        seen = (self.visible.sum(-1) > 0)[:, None] & self.valid
        if not bool(seen.any()):
            return torch.tensor(float("nan"), device=self.hits.device)
        return self.per_prototype()[seen].float().mean()


class PrototypeStability(_PrototypeMetric):
    """Mean over prototypes of the fraction of images whose hit vector survives noise (module docstring).

    Args:
        num_classes: ``C``.
        prototypes_per_class: ``k``.
        num_parts: ``P`` keypoints per object.
        box_fraction: box side relative to the image side (``72 / 224``).
        valid: optional ``[C, k]`` mask of the prototypes that count.
    """

    def __init__(
        self,
        num_classes: int,
        prototypes_per_class: int,
        num_parts: int,
        box_fraction: float = 72 / 224,
        valid: Tensor | None = None,
        **kwargs,
    ) -> None:
        super().__init__(num_classes, prototypes_per_class, num_parts, box_fraction, valid, **kwargs)
        self.add_state("unchanged", torch.zeros(num_classes, prototypes_per_class), dist_reduce_fx="sum")
        self.add_state("images", torch.zeros(num_classes), dist_reduce_fx="sum")

    def update(
        self,
        maps: Tensor,
        noisy_maps: Tensor,
        keypoints: list[Tensor],
        box_labels: list[Tensor],
        image_size: tuple[int, int],
    ) -> None:
        """Adds a batch.

        Args:
            maps: ``[B, C, k, h, w]`` prototype maps of the clean images.
            noisy_maps: the same for the noisy images (see :func:`prototype_noise`).
            keypoints: per image ``[n_i, P, 2]``.
            box_labels: per image ``[n_i]``.
            image_size: ``(H, W)``.
        """
        self._check(maps, keypoints)
        if noisy_maps.shape != maps.shape:
            raise ValueError(f"noisy_maps {tuple(noisy_maps.shape)} must match maps {tuple(maps.shape)}")
        clean = prototype_hits(maps, keypoints, box_labels, image_size, self.box_fraction)
        if clean is None:
            return
        noisy = prototype_hits(noisy_maps, keypoints, box_labels, image_size, self.box_fraction)
        cls, hits, _, _ = clean
        same = (hits == noisy[1]).all(-1)  # [N, k]
        self.unchanged.index_add_(0, cls, same.float())
        self.images.index_add_(0, cls, torch.ones_like(cls, dtype=self.images.dtype))

    def per_prototype(self) -> Tensor:
        """``[C, k]`` stability of each prototype (NaN for classes never seen)."""
        return self.unchanged / self.images[:, None].where(self.images[:, None] > 0, torch.nan)

    def compute(self) -> Tensor:
        seen = (self.images > 0)[:, None] & self.valid
        if not bool(seen.any()):
            return torch.tensor(float("nan"), device=self.unchanged.device)
        return self.per_prototype()[seen].mean()


__all__ = ["PrototypeConsistency", "PrototypeStability", "prototype_hits", "prototype_noise"]
