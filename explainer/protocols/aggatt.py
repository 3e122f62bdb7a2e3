"""AggAtt: aggregate attribution maps over a whole grid data set (Rao, Boehle and Schiele, CVPR 2022).

The maps that explain the same grid cell (the top-left one by default) are sorted by their localisation
score and split at the percentiles 0-2, 2-5, 5-50, 50-95, 95-98 and 98-100; each bin shows the mean of
the positive part of its maps. All bins (and, in :func:`save_aggatt`, all methods of a figure) share one
colour scale clipped at the 99.5th percentile of their values, and the target cell is outlined, so a
glance shows where a method puts its attribution in its best, typical and worst cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import torch
from torch import Tensor

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from explainer.viz import save_figure  # noqa: E402

AGGATT_PERCENTILES = (0.0, 2.0, 5.0, 50.0, 95.0, 98.0, 100.0)


def aggatt_bins(maps: Tensor, scores: Tensor, percentiles: tuple[float, ...] = AGGATT_PERCENTILES) -> Tensor:
    """The mean positive map of each percentile bin of the scores.

    Args:
        maps: ``[N, H, W]`` maps explaining the same cell.
        scores: ``[N]`` their localisation scores.
        percentiles: bin edges in percent (ascending, from 0 to 100).

    Returns:
        ``[len(percentiles) - 1, H, W]``; a bin that holds no map (fewer maps than bins) is all zero.
        Bin ``j`` holds the maps of rank ``floor(p_j N / 100)`` to ``floor(p_{j+1} N / 100)`` (exclusive)
        in ascending score order.
    """
    if maps.ndim != 3 or scores.shape != maps.shape[:1]:
        raise ValueError(f"expected maps [N, H, W] and scores [N], got {tuple(maps.shape)} and {tuple(scores.shape)}")
    order = torch.argsort(scores, stable=True)
    positive = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)[order]
    n = len(order)
    edges = [int(p * n // 100) for p in percentiles]
    out = torch.zeros(len(edges) - 1, *maps.shape[-2:])
    for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        if hi > lo:
            out[j] = positive[lo:hi].mean(0).cpu()
    return out


def save_aggatt(
    bins: Tensor,
    path: str | Path,
    grid_size: int,
    cell: int = 0,
    title: str = "",
    scale: float | None = None,
    percentiles: tuple[float, ...] = AGGATT_PERCENTILES,
) -> Path:
    """One AggAtt row as a PNG: the bins side by side on one colour scale, the target cell outlined.

    Args:
        bins: ``[J, H, W]`` from :func:`aggatt_bins`.
        path: the PNG to write.
        grid_size: ``n``.
        cell: the explained cell (outlined).
        title: figure title (e.g. the method and protocol).
        scale: the colour scale's top; ``None`` uses the 99.5th percentile of the bins' values.
        percentiles: the bin edges, for the labels.
    """
    fig, axes = plt.subplots(1, len(bins), figsize=(1.6 * len(bins), 1.9), squeeze=False)
    draw_aggatt_row(axes[0], bins, grid_size, cell, scale, percentiles)
    if title:
        fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def draw_aggatt_row(
    axes: Sequence[Any],
    bins: Tensor,
    grid_size: int,
    cell: int = 0,
    scale: float | None = None,
    percentiles: tuple[float, ...] | None = AGGATT_PERCENTILES,
) -> None:
    """Draws the bins on a row of matplotlib axes: one colour scale (``scale``, or the 99.5th percentile of the
    bins), the cell grid, the target cell outlined; titles from ``percentiles`` (``None``: no titles)."""
    top = max(clip_value(bins) if scale is None else float(scale), 1e-12)
    h, w = bins.shape[-2:]
    r, c = divmod(int(cell), grid_size)
    for j, ax in enumerate(axes):
        ax.imshow(bins[j].numpy(), cmap="inferno", vmin=0, vmax=top)
        ax.add_patch(
            Rectangle(
                (c * w / grid_size - 0.5, r * h / grid_size - 0.5),
                w / grid_size,
                h / grid_size,
                fill=False,
                edgecolor="cyan",
                linewidth=1.5,
            )
        )
        for k in range(1, grid_size):
            ax.axhline(k * h / grid_size - 0.5, color="white", linewidth=0.4, alpha=0.5)
            ax.axvline(k * w / grid_size - 0.5, color="white", linewidth=0.4, alpha=0.5)
        if percentiles is not None:
            ax.set_title(f"{percentiles[j]:g}-{percentiles[j + 1]:g}%", fontsize=7)
        ax.set_xticks([])  # ticks off, frame kept: a row label (ylabel) stays visible
        ax.set_yticks([])


def clip_value(bins: Tensor, quantile: float = 0.995) -> float:
    """The 99.5th percentile of the bins' values (the shared colour scale's top)."""
    flat = bins.flatten().float()
    if flat.numel() > 1_000_000:  # torch.quantile has an input size limit; a strided sample is plenty
        flat = flat[:: flat.numel() // 1_000_000 + 1]
    return float(torch.quantile(flat, quantile)) if flat.numel() else 0.0


__all__ = ["AGGATT_PERCENTILES", "aggatt_bins", "clip_value", "draw_aggatt_row", "save_aggatt"]
