"""Figures: saving and logging matplotlib figures, images back to RGB, the prototype gallery.

Usable by every layer above the data (modules, callbacks, evaluation, export); matplotlib is imported when a
figure is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from explainer.atomic import atomic_path
from explainer.ops import IMAGENET_MEAN, IMAGENET_STD, denormalize
from explainer.runs import run_dir


def save_figure(fig: Any, path: str | Path) -> Path:
    """Saves a matplotlib figure as PNG and closes it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=100, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


@rank_zero_only
def log_figure(trainer: pl.Trainer, key: str, fig: Any) -> Path:
    """Logs a figure: always a PNG under ``<run folder>/images/``, plus a wandb image under wandb.

    Args:
        trainer: the running trainer (gives the run folder, epoch and logger).
        key: the image's name, e.g. ``val/masks``.
        fig: a matplotlib figure (closed afterwards).

    Returns:
        The PNG's path.
    """
    name = f"{key.replace('/', '-')}-epoch{trainer.current_epoch:03d}.png"
    path = save_figure(fig, run_dir(trainer) / "images" / name)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
    return path


def as_rgb(images: torch.Tensor, datamodule: Any) -> torch.Tensor:
    """Maps normalised images back to ``[0, 1]`` with the data module's constants (ImageNet if absent)."""
    return denormalize(images, getattr(datamodule, "mean", IMAGENET_MEAN), getattr(datamodule, "std", IMAGENET_STD))


def top_patches(
    images: Tensor, maps: Tensor, num_patches: int = 6, box_fraction: float = 72 / 224
) -> tuple[Tensor, Tensor, Tensor]:
    """The patches of ``images`` where each prototype activates most, one patch per image.

    Args:
        images: ``[N, 3, H, W]`` images (any value range; RGB in ``[0, 1]`` for plotting).
        maps: ``[N, k, h, w]`` the maps of ``k`` prototypes on those images.
        num_patches: patches per prototype (at most ``N``).
        box_fraction: patch side relative to the image side (72 px at 224 px).

    Returns:
        ``(patches [k, n, 3, s, s], scores [k, n], image_index [k, n])``: for each prototype the ``n``
        images with the highest peak activation, best first, cropped around the peak (boxes are shifted
        to stay inside the image), with the peak values and the indices of the images.
    """
    n_img, _, height, width = images.shape
    n = min(num_patches, n_img)
    side_y = max(1, min(height, round(box_fraction * height)))
    side_x = max(1, min(width, round(box_fraction * width)))
    up = F.interpolate(maps.float(), size=(height, width), mode="bilinear", align_corners=False)
    peak_val, peak_idx = up.flatten(2).max(-1)  # [N, k]
    scores, order = peak_val.T.topk(n, dim=1)  # [k, n]
    flat = peak_idx.T.gather(1, order)
    y0 = (flat // width - side_y // 2).clamp(0, height - side_y)
    x0 = (flat % width - side_x // 2).clamp(0, width - side_x)
    ys = y0[..., None] + torch.arange(side_y, device=images.device)  # [k, n, s]
    xs = x0[..., None] + torch.arange(side_x, device=images.device)
    hwc = images.permute(0, 2, 3, 1)
    patches = hwc[order[..., None, None], ys[..., :, None], xs[..., None, :]]  # [k, n, s, s, 3]
    return patches.permute(0, 1, 4, 2, 3), scores, order


def gallery_figure(patches: Tensor, scores: Tensor, class_name: str, num_prototypes: int | None = None) -> Any:
    """A matplotlib figure: one row per prototype, its top patches left to right.

    Args:
        patches: ``[k, n, 3, s, s]`` RGB patches in ``[0, 1]``.
        scores: ``[k, n]`` peak activations.
        class_name: the class, for the title.
        num_prototypes: rows to show (the real prototypes; default all).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = patches.shape[0] if num_prototypes is None else max(1, num_prototypes)
    n = patches.shape[1]
    fig, axes = plt.subplots(k, n, figsize=(1.3 * n, 1.4 * k), squeeze=False)
    rgb = patches.clamp(0, 1).permute(0, 1, 3, 4, 2).cpu().numpy()
    for i in range(k):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(rgb[i, j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{float(scores[i, j]):.2f}", fontsize=6)
        axes[i, 0].set_ylabel(f"p{i}", fontsize=8)
    fig.suptitle(f"class {class_name}: top-activating training patches per prototype", fontsize=8)
    return fig


__all__ = ["as_rgb", "gallery_figure", "log_figure", "save_figure", "top_patches"]
