"""Extremal perturbations (Fong, Patrick and Vedaldi, ICCV 2019).

For each (image, class) pair and each target area ``a``, a smooth mask ``m`` is optimised so that the
region it keeps (``preserve``), deletes (``delete``) or both (``dual``) drives the class score ``s`` (the
log-odds of :func:`~explainer.methods.common.class_log_odds`, i.e. the logit for a sigmoid classifier):

    preserve: minimise  -s(P(x, m))                      + lambda_t * R_a(m)
    delete:   minimise   s(P(x, 1 - m))                  + lambda_t * R_a(m)
    dual:     minimise  -s(P(x, m)) + s(P(x, 1 - m))     + lambda_t * R_a(m)

* Mask: parameters in [0, 1] on a grid of stride 7 px (at 224 px), each spread by a radial Gaussian of
  sigma 21 px and combined by a smooth max (:class:`SmoothMask`, evaluated at the grid points and
  interpolated bilinearly); they start at 0.5 and are clamped to [0, 1] after every step.
* Perturbation ``P(x, m)``: a blur pyramid (:class:`BlurPyramid`), sharp where ``m = 1``, blurred with
  sigma 20 px where ``m = 0``, interpolated linearly between ``levels`` blur levels in between.
* Area constraint ``R_a(m) = mean((sort(m) - r_a)^2)`` with ``r_a`` = ``(1 - a) * n`` zeros then ones;
  ``lambda_t = 300 * 1.0035^t``.
* SGD, learning rate 0.01, momentum 0.9, 800 iterations.

The map of a pair is the sum of its masks over ``areas``. Pixel sizes given at 224 px are rescaled to
the image size (stride 2 px, sigma 6 px and blur sigma 5.7 px at 64 px). All pairs and areas are one
batch (in chunks of ``batch_size`` rows); the loss is a sum over rows and SGD is element-wise, so a row's
result does not depend on its batch-mates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.methods.base import AttributionMethod, check_classes, register_method
from explainer.methods.common import (
    chunk_slices,
    class_log_odds,
    eval_mode,
    scaled,
    scatter_pairs,
    valid_pairs,
)
from explainer.ops import check_activation, gaussian_blur

VARIANTS = ("preserve", "delete", "dual")


class SmoothMask(nn.Module):
    """A smooth mask from a parameter grid: ``m(u) = smax_k g(u - u_k) p_k``.

    Grid point ``k`` sits at pixel ``(i * stride, j * stride)``; ``g`` is a radial Gaussian of standard
    deviation ``sigma`` (truncated at ``2 sigma``) with ``g(0) = 1``; the smooth max of values ``v`` is
    ``sum v exp(v / T) / sum exp(v / T)`` over the grid points within reach; beyond the image border the
    grid repeats its border values (so equal parameters give a flat mask). The mask is evaluated at the
    grid points and interpolated bilinearly in between: with ``sigma`` three strides (the paper's 21 / 7)
    it varies little over one stride, and this costs ``stride^2`` times less than evaluating every pixel.

    Args:
        stride: grid spacing in pixels.
        sigma: Gaussian standard deviation in pixels.
        temperature: T of the smooth max (smaller is closer to the max).
    """

    def __init__(self, stride: int, sigma: float, temperature: float = 0.05) -> None:
        super().__init__()
        if stride < 1 or sigma <= 0 or temperature <= 0:
            raise ValueError(f"need stride >= 1, sigma > 0, temperature > 0; got {stride}, {sigma}, {temperature}")
        self.stride = int(stride)
        self.sigma = float(sigma)
        self.temperature = float(temperature)
        self.reach = max(1, int(math.floor(2 * self.sigma / self.stride)))

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """Parameter grid ``(gh, gw)`` whose points cover an image of ``height x width``."""
        return math.ceil((height - 1) / self.stride) + 1, math.ceil((width - 1) / self.stride) + 1

    def kernel(self, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[(2r + 1)^2]`` weights ``g`` of the grid offsets within reach (0 beyond ``2 sigma``)."""
        d = torch.arange(-self.reach, self.reach + 1, device=device, dtype=dtype) * self.stride
        d2 = d[:, None] ** 2 + d[None, :] ** 2
        return (torch.exp(-0.5 * d2 / self.sigma**2) * (d2 <= (2 * self.sigma) ** 2)).flatten()

    def grid_values(self, params: Tensor) -> Tensor:
        """The mask at the grid points ``[N, 1, gh, gw]`` for parameters ``[N, 1, gh, gw]``."""
        n, _, gh, gw = params.shape
        r = self.reach
        # the grid continues beyond the image with its border values, so equal parameters give a flat mask
        values = F.unfold(F.pad(params, (r, r, r, r), mode="replicate"), 2 * r + 1)  # [N, (2r+1)^2, gh * gw]
        v = values * self.kernel(params.device, params.dtype).view(1, -1, 1)
        m = (torch.softmax(v / self.temperature, dim=1) * v).sum(1)
        return m.view(n, 1, gh, gw)

    def forward(self, params: Tensor, size: tuple[int, int]) -> Tensor:
        """Masks ``[N, 1, H, W]`` from parameters ``[N, 1, gh, gw]`` (see :meth:`grid_shape`)."""
        grid = self.grid_values(params)
        gh, gw = grid.shape[-2:]
        full = (gh - 1) * self.stride + 1, (gw - 1) * self.stride + 1
        if full != (gh, gw):
            grid = F.interpolate(grid, size=full, mode="bilinear", align_corners=True)
        return grid[..., : size[0], : size[1]]


class BlurPyramid(nn.Module):
    """Blur perturbation: ``levels`` Gaussian blurs from ``max_sigma`` down to 0 (the image itself).

    A mask value ``m`` selects the blur ``max_sigma * (1 - m)`` by linear interpolation between the two
    nearest levels, so ``m = 1`` keeps the pixel sharp and ``m = 0`` blurs it fully.

    Args:
        max_sigma: the strongest blur in pixels.
        levels: number of pyramid levels (at least 2).
    """

    def __init__(self, max_sigma: float, levels: int = 8) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        self.max_sigma = float(max_sigma)
        self.levels = int(levels)

    def pyramid(self, images: Tensor) -> Tensor:
        """``[N, L, 3, H, W]`` blurred copies, strongest first, the last one the image."""
        sigmas = [self.max_sigma * (1 - i / (self.levels - 1)) for i in range(self.levels)]
        return torch.stack([gaussian_blur(images, sig) for sig in sigmas], dim=1)

    def forward(self, pyramid: Tensor, mask: Tensor) -> Tensor:
        """The perturbed images ``[N, 3, H, W]`` of a ``pyramid`` for masks ``[N, 1, H, W]`` in [0, 1]."""
        pos = mask * (self.levels - 1)  # [N, 1, H, W]
        level = torch.arange(self.levels, device=mask.device, dtype=mask.dtype).view(1, -1, 1, 1, 1)
        weights = torch.relu(1 - (pos.unsqueeze(1) - level).abs())  # [N, L, 1, H, W], hat functions
        return (weights * pyramid).sum(1)


def area_loss(masks: Tensor, areas: Tensor) -> Tensor:
    """``mean((sort(m) - r_a)^2)`` per row; ``masks`` ``[N, ...]``, ``areas`` ``[N]`` fractions in (0, 1)."""
    flat = masks.flatten(1)
    n = flat.shape[1]
    sorted_m = flat.sort(dim=1).values
    ones_from = torch.round((1 - areas) * n).view(-1, 1)
    reference = (torch.arange(n, device=masks.device).view(1, -1) >= ones_from).to(flat.dtype)
    return (sorted_m - reference).pow(2).mean(1)


@register_method
class ExtremalPerturbation(AttributionMethod):
    """Extremal perturbations with a smooth mask, a blur pyramid and an area constraint (module docstring).

    Args:
        classifier: the model explained (logits).
        areas: target areas; the map is the sum of the masks over them (the paper's VOC / COCO
            baselines: 0.05, 0.1, 0.2, 0.3; pointing game VOC: 0.025, 0.05, 0.1, 0.2).
        variant: ``preserve``, ``delete`` or ``dual``.
        iterations: SGD steps (paper: 800).
        lr: SGD learning rate (0.01).
        momentum: SGD momentum (0.9).
        area_weight: initial lambda (300).
        area_growth: factor applied to lambda after every step (1.0035).
        stride: parameter grid stride in pixels at 224 px (7), rescaled to the image size.
        sigma: radial Gaussian sigma in pixels at 224 px (21), rescaled.
        max_blur: strongest blur sigma in pixels at 224 px (20), rescaled.
        levels: blur pyramid levels (8).
        smooth_max_temperature: temperature of the smooth max combining the Gaussians (0.05).
        activation: ``sigmoid`` (multi-label) or ``softmax`` (single-label) log-odds as the score.
        batch_size: (pair, area) rows optimised per chunk.
    """

    name = "extremal"
    cost = "optimisation"
    needs_grad = True

    def __init__(
        self,
        classifier: nn.Module | None = None,
        areas: Sequence[float] = (0.05, 0.1, 0.2, 0.3),
        variant: str = "preserve",
        iterations: int = 800,
        lr: float = 0.01,
        momentum: float = 0.9,
        area_weight: float = 300.0,
        area_growth: float = 1.0035,
        stride: float = 7.0,
        sigma: float = 21.0,
        max_blur: float = 20.0,
        levels: int = 8,
        smooth_max_temperature: float = 0.05,
        activation: str = "sigmoid",
        batch_size: int = 64,
    ) -> None:
        super().__init__(classifier)
        if classifier is None:
            raise ValueError("extremal perturbations need the classifier to explain")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant '{variant}'; expected one of {VARIANTS}")
        if not areas or any(not 0.0 < a < 1.0 for a in areas):
            raise ValueError(f"areas must be a non-empty list of fractions in (0, 1), got {list(areas)}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.areas = [float(a) for a in areas]
        self.variant = variant
        self.iterations = int(iterations)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.area_weight = float(area_weight)
        self.area_growth = float(area_growth)
        self.stride = float(stride)
        self.sigma = float(sigma)
        self.max_blur = float(max_blur)
        self.levels = int(levels)
        self.smooth_max_temperature = float(smooth_max_temperature)
        self.activation = check_activation(activation)
        self.batch_size = int(batch_size)

    def parts(self, height: int, width: int) -> tuple[SmoothMask, BlurPyramid]:
        """The mask generator and perturbation for images of ``height x width`` (sizes rescaled)."""
        size = min(height, width)
        stride = max(1, int(round(scaled(self.stride, size))))
        mask = SmoothMask(stride, scaled(self.sigma, size), self.smooth_max_temperature)
        return mask, BlurPyramid(scaled(self.max_blur, size), self.levels)

    def optimise(self, images: Tensor, targets: Tensor, areas: Tensor) -> Tensor:
        """Masks ``[N, H, W]`` for rows of ``images`` ``[N, 3, H, W]``, ``targets`` ``[N]``, ``areas`` ``[N]``."""
        n, _, h, w = images.shape
        generator, perturb = self.parts(h, w)
        with torch.no_grad():
            pyramid = perturb.pyramid(images.detach().float())
        params = torch.full((n, 1, *generator.grid_shape(h, w)), 0.5, device=images.device, requires_grad=True)
        optimiser = torch.optim.SGD([params], lr=self.lr, momentum=self.momentum)
        weight = self.area_weight
        for _ in range(self.iterations):
            mask = generator(params, (h, w))
            loss = weight * area_loss(mask, areas)
            if self.variant in ("preserve", "dual"):
                logits = self.classifier(perturb(pyramid, mask).to(images.dtype))
                loss = loss - class_log_odds(logits.float(), targets, self.activation)
            if self.variant in ("delete", "dual"):
                logits = self.classifier(perturb(pyramid, 1 - mask).to(images.dtype))
                loss = loss + class_log_odds(logits.float(), targets, self.activation)
            optimiser.zero_grad(set_to_none=True)
            loss.sum().backward(inputs=[params])
            optimiser.step()
            with torch.no_grad():
                params.clamp_(0.0, 1.0)
            weight *= self.area_growth
        with torch.no_grad():
            return generator(params.detach(), (h, w))[:, 0]

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        """Maps ``[B, K, H, W]`` of ``classes`` ``[B, K]`` (``-1`` gives a zero map): masks summed over areas."""
        check_classes(images, classes)
        b_idx, k_idx, c_idx = valid_pairs(classes)
        a = len(self.areas)
        areas = torch.tensor(self.areas, device=images.device)
        # rows: pair-major, area-minor
        row_pair = torch.arange(len(b_idx), device=images.device).repeat_interleave(a)
        row_area = areas.repeat(len(b_idx))
        masks = []
        with torch.enable_grad(), eval_mode(self.classifier):
            for part in chunk_slices(len(row_pair), self.batch_size):
                pairs = row_pair[part]
                masks.append(self.optimise(images[b_idx[pairs]].detach(), c_idx[pairs], row_area[part]))
        h, w = images.shape[-2:]
        if masks:
            values = torch.cat(masks).view(len(b_idx), a, h, w).sum(1)
        else:
            values = images.new_zeros(0, h, w)
        return scatter_pairs(values.to(images.dtype), b_idx, k_idx, tuple(classes.shape))
