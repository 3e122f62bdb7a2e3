"""Deletion and insertion, the causal metrics of RISE (Petsiuk et al., BMVC 2018).

Protocol:

* pixels are ranked by the map (descending; one ranking shared by the three channels). Tied pixels
  follow ``tie_order``: ``"rise"`` (default) takes them as RISE's ``CausalMetric`` does
  (``evaluation.py``: ``flip(argsort(map))``), i.e. the flipped **stable** ascending argsort: among equal
  values the last pixel in row-major order comes first; ``"raster"`` takes them in row-major order.
  (RISE calls NumPy's default ``argsort``, which is not guaranteed stable: for a uniform map it keeps
  row-major order, so RISE changes the last pixel first as here, but on maps with plateaus of several
  values its tie order depends on NumPy's sorting routine; ``"rise"`` fixes it to the stable one);
* every step changes ``step`` more pixels: ``n = ceil(H * W / step)`` steps and ``n + 1`` scores
  (step 0 is the start image, step ``n`` the finish image);
* **deletion** starts from the image and replaces the top pixels by 0 (the mean colour in normalised
  space); **insertion** starts from a blurred copy and restores the top pixels of the original;
* the blur is RISE's: an 11 x 11 kernel from a Gaussian of sigma 5 *folded at the borders* (see
  :func:`rise_blur_kernel`), convolved per channel with zero padding;
* the score is the probability of the explained class (sigmoid for multi-label, or softmax); the RISE
  protocol explains the class predicted on the clean image (:func:`top_classes`);
* AUC by the trapezoid rule on [0, 1]: ``(sum(a) - a_0 / 2 - a_n / 2) / n``.

All steps of all samples are built with cumulative masks from one ranking (pixel ``p`` is changed at step
``i`` iff ``rank(p) < i * step``) and scored in a few large forward passes of ``chunk_size`` images; the
perturbed images are built chunk by chunk, so memory does not grow with the number of steps. (The
original's in-place edits through a NumPy view are lost on GPU tensors; nothing here edits in place.)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.metrics.common import (
    ClassifierMetric,
    check_maps,
    class_probabilities,
    constant_maps,
    forward_in_chunks,
    resize_maps,
    sanitize_maps,
)
from explainer.ops import check_activation

MODES = ("deletion", "insertion")
TIE_ORDERS = ("rise", "raster")
TieOrder = Literal["rise", "raster"]


def check_tie_order(tie_order: str) -> None:
    """Raises a clear error for an unknown tie order of the pixel ranking."""
    if tie_order not in TIE_ORDERS:
        raise ValueError(
            f"unknown tie_order {tie_order!r}; use one of {TIE_ORDERS}: 'rise' takes tied pixels as RISE's "
            "flip(argsort(map)) does (last row-major pixel first), 'raster' in row-major order"
        )


def rise_blur_kernel(size: int = 11, sigma: float = 5.0, truncate: float = 4.0) -> Tensor:
    """RISE's blur kernel: a Gaussian folded back into a ``size x size`` window.

    The 1-D Gaussian is sampled at integer offsets ``|d| <= round(truncate * sigma)`` around the window's
    centre and normalised; every offset that falls outside the window is folded back in by mirror
    reflection about the window's edges (``... c b a | a b c ... | ... c b a``, period ``2 * size``), so
    no mass is lost. With sigma 5 on 11 taps most of the tails land near the borders, making the kernel
    almost flat: the corner weight of the 2-D kernel ``k k^T`` is about 0.88 of the centre's. (This is a
    blurred delta under reflecting boundary conditions, what RISE obtained from a Gaussian filter of a
    one-pixel impulse.)

    Args:
        size: window width (odd).
        sigma: standard deviation of the Gaussian, in pixels.
        truncate: the Gaussian is cut at this many standard deviations.

    Returns:
        ``[size, size]`` float64 kernel summing to 1.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the blur kernel size must be a positive odd number, got {size}")
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2) if sigma > 0 else (offsets == 0).double()
    weights /= weights.sum()
    position = (offsets.long() + size // 2) % (2 * size)
    position = torch.where(position >= size, 2 * size - 1 - position, position)
    kernel = torch.zeros(size, dtype=torch.float64).index_add_(0, position, weights)
    return torch.outer(kernel, kernel)


def rise_blur(images: Tensor, size: int = 11, sigma: float = 5.0) -> Tensor:
    """Blurs ``[B, C, H, W]`` images channel by channel with :func:`rise_blur_kernel` (zero padding)."""
    channels = images.shape[1]
    kernel = rise_blur_kernel(size, sigma).to(device=images.device, dtype=images.dtype)
    return F.conv2d(images, kernel.expand(channels, 1, size, size), padding=size // 2, groups=channels)


def trapezoid_auc(curves: Tensor) -> Tensor:
    """Area under ``[..., n + 1]`` curves sampled evenly on [0, 1]: ``(sum - a_0 / 2 - a_n / 2) / n``."""
    steps = curves.shape[-1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / steps


@torch.no_grad()
def top_classes(classifier: nn.Module, images: Tensor, k: int = 1) -> Tensor:
    """The ``k`` classes with the largest logits on the clean images, ``[B, k]`` (what RISE explains)."""
    return classifier(images).topk(k, dim=1).indices


def num_steps(height: int, width: int, step: int) -> int:
    """``n = ceil(H * W / step)``: the number of steps (there are ``n + 1`` scores)."""
    return math.ceil(height * width / step)


def _pixel_ranks(maps: Tensor, tie_order: TieOrder = "rise") -> Tensor:
    """``[N, P]`` rank of every pixel of ``[N, H, W]`` maps (0 = largest value, changed first).

    ``tie_order="rise"``: the order is ``flip(stable_argsort_ascending(map))``, RISE's ranking (ties: the
    last row-major pixel first); ``"raster"``: a stable descending sort (ties: the first pixel first).
    """
    flat = maps.flatten(1)
    if tie_order == "rise":
        order = flat.argsort(dim=1, stable=True).flip(1)
    else:
        order = flat.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


@torch.no_grad()
def insertion_deletion_curves(
    classifier: nn.Module,
    images: Tensor,
    maps: Tensor,
    classes: Tensor,
    step: int | None = None,
    modes: tuple[str, ...] = MODES,
    activation: Literal["sigmoid", "softmax"] = "sigmoid",
    chunk_size: int = 64,
    blur_size: int = 11,
    blur_sigma: float = 5.0,
    tie_order: TieOrder = "rise",
) -> dict[str, Tensor]:
    """Deletion and insertion curves (for plots and for :class:`InsertionDeletion`).

    Args:
        classifier: maps images to logits (used as it is: eval mode, on the images' device).
        images: ``[B, 3, H, W]`` normalised images.
        maps: ``[B, K, h, w]`` maps for ``classes`` (resized bilinearly to ``H x W`` for the ranking;
            non-finite values count as 0).
        classes: ``[B, K]`` classes to score (``-1`` = padding: NaN curves).
        step: pixels changed per step; default ``W`` (one image row's worth, RISE's 224 at 224 px).
        modes: any of ``"deletion"``, ``"insertion"``.
        activation: ``"sigmoid"`` (multi-label) or ``"softmax"``.
        chunk_size: the largest forward pass.
        blur_size: width of the insertion blur kernel.
        blur_sigma: sigma of the insertion blur.
        tie_order: order of tied pixels, ``"rise"`` (RISE's ``flip(argsort(map))``: the last row-major
            pixel first) or ``"raster"`` (row-major order).

    Returns:
        ``{mode: [B, K, n + 1] float64}`` probabilities of the class after ``0, step, 2 step, ...`` pixels.
    """
    check_maps(maps, classes)
    check_activation(activation)
    check_tie_order(tie_order)
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; use any of {MODES}")
    device = images.device
    height, width = images.shape[-2:]
    step = width if step is None else int(step)
    if step < 1:
        raise ValueError(f"step must be >= 1 pixel, got {step}")
    steps = num_steps(height, width, step)
    classes = classes.to(device)
    maps, _ = sanitize_maps(maps.to(device))
    valid = classes >= 0
    image_index = valid.nonzero()[:, 0]
    target = classes[valid]
    ranks = _pixel_ranks(resize_maps(maps, (height, width))[valid], tie_order)  # [N, P]
    changed_counts = (torch.arange(steps + 1, device=device) * step).clamp(max=height * width)
    zero = torch.zeros((), dtype=images.dtype, device=device)
    blurred = rise_blur(images, blur_size, blur_sigma) if "insertion" in modes else None
    curves = {}
    for mode in modes:

        def perturbed(index: Tensor, mode: str = mode) -> Tensor:
            sample, done = index // (steps + 1), index % (steps + 1)
            changed = (ranks[sample] < changed_counts[done].unsqueeze(1)).view(-1, 1, height, width)
            source = images[image_index[sample]]
            if mode == "deletion":
                return torch.where(changed, zero, source)
            return torch.where(changed, source, blurred[image_index[sample]])

        total = len(target) * (steps + 1)
        logits = forward_in_chunks(classifier, perturbed, total, chunk_size, device)
        scores = torch.full((*classes.shape, steps + 1), float("nan"), dtype=torch.float64, device=device)
        if total:
            probs = class_probabilities(logits.double(), activation)
            picked = probs.gather(1, target.repeat_interleave(steps + 1).unsqueeze(1)).view(-1, steps + 1)
            scores[valid] = picked
        curves[mode] = scores
    return curves


class InsertionDeletion(ClassifierMetric):
    """Mean deletion and insertion AUC over image-class pairs (see the module docstring).

    Deletion: lower is better; insertion: higher is better. Maps with non-finite values (set to 0) or a
    single value (no ranking: every pixel is tied, so they go in the tie order; with ``"rise"`` the last
    pixel first, as RISE does) are still scored and counted in ``invalid``.

    Args:
        classifier: the classifier (logits), see :class:`~explainer.metrics.common.ClassifierMetric`.
        step: pixels per step (default: the image width).
        activation: ``"sigmoid"`` (multi-label) or ``"softmax"``.
        chunk_size: images per forward pass (64 suits a CPU; raise it on a GPU).
        modes: which curves to compute.
        blur_size: width of the insertion blur kernel (RISE: 11).
        blur_sigma: sigma of the insertion blur (RISE: 5).
        tie_order: order of tied pixels in the ranking: ``"rise"`` (default; RISE's
            ``flip(argsort(map))``, the last row-major pixel of a tie first) or ``"raster"`` (row-major).
        **kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> classes = top_classes(classifier, images)          # RISE: explain the predicted class
        >>> metric = InsertionDeletion(classifier, step=224)
        >>> metric.update(images, method.attribute(images, classes), classes)
        >>> metric.compute()                                   # {"deletion": ..., "insertion": ..., ...}
    """

    higher_is_better = None

    def __init__(
        self,
        classifier: nn.Module,
        step: int | None = None,
        activation: Literal["sigmoid", "softmax"] = "sigmoid",
        chunk_size: int = 64,
        modes: tuple[str, ...] = MODES,
        blur_size: int = 11,
        blur_sigma: float = 5.0,
        tie_order: TieOrder = "rise",
        **kwargs: Any,
    ) -> None:
        super().__init__(classifier, activation, chunk_size, **kwargs)
        check_tie_order(tie_order)
        unknown = set(modes) - set(MODES)
        if unknown or not modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {modes}")
        if step is not None and step < 1:
            raise ValueError(f"step must be >= 1 pixel, got {step}")
        self.step = step
        self.modes = tuple(modes)
        self.blur_size = blur_size
        self.blur_sigma = blur_sigma
        self.tie_order = tie_order
        for mode in MODES:
            self.add_state(f"{mode}_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("invalid", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: Tensor, maps: Tensor, classes: Tensor) -> None:
        """Scores one batch.

        Args:
            images: ``[B, 3, H, W]`` normalised images.
            maps: ``[B, K, h, w]`` maps for ``classes``.
            classes: ``[B, K]`` classes scored (``-1`` = padding, ignored).
        """
        curves = insertion_deletion_curves(
            self.classifier,
            images,
            maps,
            classes,
            self.step,
            self.modes,
            self.activation,
            self.chunk_size,
            self.blur_size,
            self.blur_sigma,
            self.tie_order,
        )
        valid = classes.to(images.device) >= 0
        clean, nonfinite = sanitize_maps(maps.to(images.device))
        invalid = (nonfinite | constant_maps(clean)) & valid
        for mode, curve in curves.items():
            getattr(self, f"{mode}_sum").add_(trapezoid_auc(curve[valid]).sum().to(self.count.device))
        self.count += valid.sum().to(self.count.device)
        self.invalid += invalid.sum().to(self.count.device)

    def compute(self) -> dict[str, Tensor]:
        """Returns the mean AUC of each computed mode (``deletion``, ``insertion``), ``samples`` and
        ``invalid`` (counts)."""
        out = {mode: getattr(self, f"{mode}_sum") / self.count.double() for mode in self.modes}
        out["samples"] = self.count.double()
        out["invalid"] = self.invalid.double()
        return out
