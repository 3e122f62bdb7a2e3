"""Small tensor helpers that every layer may use: normalisation constants, Gaussian blur, the activation check,
and the selection of per-class maps.

Each exists once here: the Explainer's blurred fill, the in-fillers, extremal perturbations and the
smoothing of maps all blur with :func:`gaussian_blur`; classifiers, methods and metrics all validate an
``activation`` option with :func:`check_activation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ACTIVATIONS = ("sigmoid", "softmax")
"""A classifier's output activation: ``sigmoid`` (multi-label) or ``softmax`` (single-label)."""


def check_activation(activation: str) -> str:
    """``activation`` if it is one of :data:`ACTIVATIONS`, else an error naming both."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}'; use 'sigmoid' (multi-label) or 'softmax' (single-label)")
    return activation


def denormalize(images: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """Maps images ``[..., 3, H, W]`` normalised with ``mean`` / ``std`` back to ``[0, 1]`` RGB."""
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(3, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


def gaussian_kernel1d(
    sigma: float, radius: int | None = None, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """A normalised 1-D Gaussian of standard deviation ``sigma`` (radius ``ceil(3 sigma)`` unless given)."""
    if sigma <= 0:
        return torch.ones(1, device=device, dtype=dtype)
    radius = int(math.ceil(3 * sigma)) if radius is None else int(radius)
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def separable_conv(x: Tensor, kernel: Tensor, padding_mode: str = "replicate") -> Tensor:
    """Convolves every channel of ``x`` ``[N, C, H, W]`` with the separable ``kernel`` (rows and columns).

    Args:
        x: the input.
        kernel: ``[k]`` odd-length 1-D kernel.
        padding_mode: ``replicate``, ``reflect`` or ``zeros``. Reflection cannot reach further than the
            image is wide; beyond that the edge is replicated.

    Returns:
        Same shape as ``x``.
    """
    n, c, h, w = x.shape
    r = kernel.numel() // 2
    if r == 0:
        return x * kernel.reshape(())
    kernel = kernel.to(device=x.device, dtype=x.dtype)
    flat = x.reshape(n * c, 1, h, w)
    if padding_mode == "zeros":
        flat = F.conv2d(flat, kernel.view(1, 1, 1, -1), padding=(0, r))
        flat = F.conv2d(flat, kernel.view(1, 1, -1, 1), padding=(r, 0))
        return flat.reshape(n, c, h, w)
    flat = F.conv2d(_pad(flat, (r, r, 0, 0), padding_mode), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(_pad(flat, (0, 0, r, r), padding_mode), kernel.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def _pad(x: Tensor, pad: tuple[int, int, int, int], mode: str) -> Tensor:
    """``F.pad``; ``reflect`` as far as the image allows, then ``replicate`` for the rest."""
    if mode != "reflect":
        return F.pad(x, pad, mode=mode)
    h, w = x.shape[-2:]
    inner = (min(pad[0], w - 1), min(pad[1], w - 1), min(pad[2], h - 1), min(pad[3], h - 1))
    x = F.pad(x, inner, mode="reflect")
    rest = tuple(p - q for p, q in zip(pad, inner, strict=True))
    return F.pad(x, rest, mode="replicate") if any(rest) else x


def gaussian_blur(x: Tensor, sigma: float, padding_mode: str = "replicate") -> Tensor:
    """Gaussian blur of ``[N, C, H, W]`` with standard deviation ``sigma`` pixels (radius ``ceil(3 sigma)``)."""
    if sigma <= 0:
        return x
    return separable_conv(x, gaussian_kernel1d(sigma, device=x.device, dtype=x.dtype), padding_mode)


def gather_classes(per_class: Tensor, classes: Tensor) -> Tensor:
    """Selects maps ``[B, K, H, W]`` for ``classes`` ``[B, K]`` from maps of every class ``[B, C, H, W]``.

    Padding entries (``-1``) give all-zero maps.
    """
    index = classes.clamp(min=0).view(*classes.shape, 1, 1).expand(-1, -1, *per_class.shape[-2:])
    maps = per_class.gather(1, index)
    return maps * (classes >= 0).view(*classes.shape, 1, 1).to(maps.dtype)


def present_classes(labels: Tensor) -> Tensor:
    """The present classes of multi-hot ``labels`` ``[B, C]`` as ``[B, K]`` indices padded with ``-1``.

    ``K`` is the largest number of present classes in the batch (at least 1).
    """
    present = labels > 0.5
    k = max(1, int(present.sum(1).max().item())) if labels.numel() else 1
    # stable order: present classes first, by index
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :k]
    taken = present.gather(1, order)
    return torch.where(taken, order, torch.full_like(order, -1))


def random_blob_masks(
    count: int,
    size: tuple[int, int],
    area: tuple[float, float] = (0.05, 0.95),
    cells: tuple[int, int] = (2, 8),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``[count, 1, H, W]`` binary masks of random blobs covering a random share of the image each.

    Each mask thresholds smooth noise (uniform noise on a ``k x k`` grid, ``k`` drawn from ``cells``,
    upsampled bilinearly) at the quantile that keeps a share drawn uniformly from ``area``: one to a few
    blobs of random shape, the kind of mask an evaluator for the encoding check is trained on.
    """
    if not 0 <= area[0] <= area[1] <= 1:
        raise ValueError(f"area must be a range within [0, 1], got {area}")
    height, width = size
    ks = torch.randint(cells[0], cells[1] + 1, (count,), generator=generator)
    shares = area[0] + (area[1] - area[0]) * torch.rand(count, generator=generator)
    smooth = torch.empty(count, height * width)
    for k in ks.unique().tolist():  # one interpolation per grid size, not per mask
        rows = torch.nonzero(ks == k)[:, 0]
        noise = torch.rand(len(rows), 1, k, k, generator=generator)
        smooth[rows] = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False).flatten(1)
    keep = (shares * height * width).round().long()
    order = smooth.argsort(dim=1, descending=True)  # one sort: the first `keep` of each row are kept
    kept = (torch.arange(height * width)[None] < keep[:, None]).float()
    masks = torch.zeros_like(smooth).scatter_(1, order, kept)
    return masks.view(count, 1, height, width).to(device)


def random_grid_masks(
    count: int,
    size: tuple[int, int],
    drop: tuple[float, float] = (0.1, 0.9),
    cells: tuple[int, int] = (2, 16),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``[count, 1, H, W]`` binary keep masks made of random cells of a coarse grid.

    Each mask draws a grid of ``k x k`` cells (``k`` uniform in ``cells``) and drops each cell with a
    probability drawn uniformly from ``drop``; the grid is upsampled bilinearly and rounded, as FIDO rounds its
    upsampled Concrete mask before the in-filler sees it (a 16 x 16 grid at 64 px is FIDO's own).
    """
    if not 0 <= drop[0] <= drop[1] <= 1:
        raise ValueError(f"drop must be a range within [0, 1], got {drop}")
    if not 1 <= cells[0] <= cells[1]:
        raise ValueError(f"cells must be a range of grid sides >= 1, got {cells}")
    height, width = size
    ks = torch.randint(cells[0], cells[1] + 1, (count,), generator=generator)
    shares = drop[0] + (drop[1] - drop[0]) * torch.rand(count, generator=generator)
    masks = torch.empty(count, 1, height, width)
    for k in ks.unique().tolist():  # one interpolation per grid size, not per mask
        rows = torch.nonzero(ks == k)[:, 0]
        kept = (torch.rand(len(rows), 1, k, k, generator=generator) >= shares[rows, None, None, None]).float()
        up = F.interpolate(kept, size=(height, width), mode="bilinear", align_corners=False)
        masks[rows] = torch.round(up)
    return masks.to(device)


__all__ = [
    "ACTIVATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_activation",
    "denormalize",
    "gather_classes",
    "gaussian_blur",
    "gaussian_kernel1d",
    "present_classes",
    "separable_conv",
]
