"""A cell-values network: per-class Shapley values on a ``grid x grid`` grid of image cells (FastSHAP).

The network of FastSHAP (Jethani et al., ICLR 2022) predicts one value per class and per player; the players
here are the cells of a regular grid. :class:`ShapleyCellsNet` builds any registered mask network as its
body (by default ``classifier_unet``, whose encoder can start from the classifier's features) and averages
the body's per-class output over each cell.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.nets.masknets import build_mask_net, register_mask_net


def check_grid(grid: int, size: tuple[int, int] | list[int]) -> None:
    """Refuses an image size the grid does not divide into equal cells, naming both and the fix."""
    h, w = int(size[0]), int(size[1])
    if h % grid or w % grid:
        fits = [g for g in range(2, min(h, w) + 1) if h % g == 0 and w % g == 0 and g <= 32]
        raise ValueError(
            f"a {grid}x{grid} cell grid does not divide {h}x{w} images into equal cells: set grid to a divisor "
            f"of both sides ({', '.join(map(str, fits)) or 'none up to 32'}) or resize the images to a "
            f"multiple of {grid}"
        )


@register_mask_net("shapley_cells")
class ShapleyCellsNet(nn.Module):
    """Per-class values of the cells of a ``grid x grid`` grid: ``cell_values(images) -> [B, C, g, g]``.

    ``forward`` gives the values at the input resolution ``[B, C, H, W]`` (nearest upsampling: every pixel
    of a cell holds the cell's value), the form every attribution map has.

    Args:
        num_classes: one value per class and cell.
        grid: cells per side; it must divide the image height and width.
        body: the registered mask network whose per-class output is averaged over each cell.
        body_kwargs: the body's own options (e.g. ``{"backbone": "digitnet", "width": 32}``).
        zero_head: start the body's class head at zero, so every value starts at 0 (the body's other layers keep
            their initialisation, so the head still gets gradients).

    Examples::

        net = build_mask_net("shapley_cells", 10, grid=8, body_kwargs={"backbone": "digitnet"})
        values = net.cell_values(images)  # [B, 10, 8, 8]
    """

    def __init__(
        self,
        num_classes: int,
        grid: int = 8,
        body: str = "classifier_unet",
        body_kwargs: dict[str, Any] | None = None,
        zero_head: bool = True,
    ) -> None:
        super().__init__()
        if int(grid) < 1:
            raise ValueError(f"grid must be >= 1 cell per side, got {grid}")
        if body == "shapley_cells":
            raise ValueError("the body of shapley_cells must be another mask network (e.g. classifier_unet)")
        self.grid = int(grid)
        self.body = build_mask_net(body, num_classes, **(body_kwargs or {}))
        self.head_prefix = "body." + getattr(self.body, "head_prefix", "")
        if zero_head:  # values start at 0: the efficiency term starts at |v(1) - v(0)|^2, not at the head's scale
            head = self.body.get_submodule(self.body.head_prefix.rstrip(".")) if self.body.head_prefix else None
            for tensor in (getattr(head, "weight", None), getattr(head, "bias", None)):
                if isinstance(tensor, torch.Tensor):
                    nn.init.zeros_(tensor)

    def init_encoder_from(self, classifier_net: nn.Module) -> None:
        """Starts the body's encoder from the classifier's trained features (``classifier_unet`` bodies).

        Raises:
            ValueError: the body cannot take the classifier's features.
        """
        if not hasattr(self.body, "init_encoder_from"):
            raise ValueError(
                f"the body {type(self.body).__name__} of shapley_cells cannot start from the classifier's features; "
                "use body: classifier_unet or set encoder_from_classifier: false"
            )
        self.body.init_encoder_from(classifier_net)

    def cell_values(self, images: Tensor) -> Tensor:
        """Per-class cell values ``[B, C, grid, grid]``."""
        check_grid(self.grid, images.shape[-2:])
        return F.adaptive_avg_pool2d(self.body(images), self.grid)

    def forward(self, images: Tensor) -> Tensor:
        """Per-class values at the input resolution ``[B, C, H, W]``, constant on each cell."""
        return F.interpolate(self.cell_values(images), size=images.shape[-2:], mode="nearest")


__all__ = ["ShapleyCellsNet", "check_grid"]
