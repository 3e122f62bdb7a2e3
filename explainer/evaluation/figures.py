"""The evaluation's pictures: example maps, mean insertion / deletion curves, score box plots, AggAtt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import torch
from torch import Tensor

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from explainer.protocols.aggatt import AGGATT_PERCENTILES, aggatt_bins, draw_aggatt_row, save_aggatt  # noqa: E402
from explainer.viz import as_rgb, save_figure  # noqa: E402


def save_example_grid(
    examples: dict[str, dict[str, Tensor]], datamodule: Any, path: Path, class_names: list[str] | None = None
) -> Path:
    """A PNG grid: one row per method, the maps of each example image's first explained class."""
    methods = list(examples)
    first = examples[methods[0]]
    rgb = as_rgb(first["images"], datamodule).permute(0, 2, 3, 1).clamp(0, 1).numpy()
    cols = len(rgb)
    fig, axes = plt.subplots(len(methods) + 1, cols, figsize=(1.5 * cols, 1.5 * (len(methods) + 1)), squeeze=False)
    for j in range(cols):
        axes[0, j].imshow(rgb[j])
        cls = int(first["classes"][j, 0])
        axes[0, j].set_title(
            f"class {class_names[cls] if class_names and 0 <= cls < len(class_names) else cls}", fontsize=7
        )
    for i, name in enumerate(methods, start=1):
        maps = examples[name]["maps"]
        for j in range(min(cols, len(maps))):
            axes[i, j].imshow(rgb[j])
            axes[i, j].imshow(maps[j, 0].float().numpy(), cmap="jet", alpha=0.55, vmin=0, vmax=1)
        axes[i, 0].text(-0.1, 0.5, name, transform=axes[i, 0].transAxes, ha="right", va="center", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    return save_figure(fig, path)


def save_curves(curves: dict[str, dict[str, Tensor]], path: Path) -> Path:
    """Mean insertion and deletion curves of each method on its example images."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, method_curves in curves.items():
        for ax, mode in zip(axes, ("insertion", "deletion"), strict=True):
            if mode in method_curves:
                curve = method_curves[mode]
                ax.plot(torch.linspace(0, 1, len(curve)), curve, label=name)
    for ax, mode in zip(axes, ("insertion", "deletion"), strict=True):
        ax.set_title(f"{mode} (mean over example images)")
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("class probability")
    axes[1].legend(fontsize=7)
    return save_figure(fig, path)


def save_score_boxplot(distributions: dict[str, Tensor], path: Path, protocol: str, grid_size: int) -> Path:
    """Box plots of the per-sample localisation scores of every method."""
    names = list(distributions)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 1.5), 3.2))
    ax.boxplot([distributions[n].numpy() for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=40, ha="right", fontsize=7)
    ax.axhline(1 / grid_size**2, color="grey", linestyle=":", linewidth=1, label="uniform map")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("localisation score")
    ax.set_title(f"{protocol}: per-sample localisation scores")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def save_aggatt_figures(
    aggregates: dict[str, Tensor], out: Path, grid_size: int, protocol: str, cell: int = 0
) -> list[Path]:
    """``aggatt/<method>.png`` per method and ``aggatt.png`` with every method as a row; the bins of a method
    share one colour scale (its 99.5th percentile), so methods of different units stay comparable in shape."""
    paths = []
    for name, bins in aggregates.items():
        safe = "".join(ch if ch.isalnum() or ch in "-_.@+" else "_" for ch in name)
        paths.append(
            save_aggatt(
                bins, out / "aggatt" / f"{safe}.png", grid_size, cell, title=f"{name}, {protocol} (cell {cell})"
            )
        )
    if not aggregates:
        return paths
    names = list(aggregates)
    fig, axes = plt.subplots(
        len(names),
        len(AGGATT_PERCENTILES) - 1,
        squeeze=False,
        figsize=(1.5 * (len(AGGATT_PERCENTILES) - 1) + 1.2, 1.5 * len(names)),
    )
    for i, name in enumerate(names):
        draw_aggatt_row(axes[i], aggregates[name], grid_size, cell, percentiles=AGGATT_PERCENTILES if i == 0 else None)
        axes[i, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"AggAtt, {protocol}: mean positive maps per percentile bin of the localisation score", fontsize=8)
    paths.append(save_figure(fig, out / "aggatt.png"))
    return paths


def aggatt_of(kept: dict[str, Tensor], shape: tuple[int, int]) -> Tensor:
    """The AggAtt bins of the maps kept by the evaluation module (zeros when none was kept)."""
    if kept.get("maps") is None or kept["maps"].numel() == 0:
        return torch.zeros(len(AGGATT_PERCENTILES) - 1, *shape)
    return aggatt_bins(kept["maps"], kept["scores"])


__all__ = ["aggatt_of", "save_aggatt_figures", "save_curves", "save_example_grid", "save_score_boxplot"]
