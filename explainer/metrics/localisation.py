"""The grid localisation score of GridPG, DiFull and DiPart (Rao, Boehle and Schiele, CVPR 2022).

For a map explaining the class of cell ``i`` of an ``n x n`` grid::

    score = sum of the positive attribution inside cell i / sum of the positive attribution everywhere

and 0 when the total positive attribution is (numerically) zero. A uniform map scores ``1 / n^2``; a map
confined to the cell scores 1. Maps of any resolution divisible by ``n`` work (cells are the ``n x n``
equal blocks), so layer attributions can be scored before upsampling as well as after.

:class:`LocalisationScore` keeps every per-sample score (``dist_reduce_fx="cat"``), because the protocol
reports the distribution (median, quartiles, box plots), not only the mean.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

ZERO_TOTAL = 1e-12


def localisation_scores(maps: Tensor, cells: Tensor, grid_size: int) -> tuple[Tensor, Tensor]:
    """Per-map localisation scores.

    Args:
        maps: ``[B, K, H, W]`` attribution maps of grid images (``H`` and ``W`` divisible by ``grid_size``).
        cells: ``[B, K]`` the cell each map explains (row-major index; ``-1`` skips the map).
        grid_size: ``n``.

    Returns:
        ``scores`` ``[m]`` for the ``m`` maps with ``cells >= 0`` (in row-major ``(b, k)`` order), and
        ``invalid`` ``[m]`` bool (a non-finite value, set to 0 before scoring).
    """
    if maps.ndim != 4 or cells.shape != maps.shape[:2]:
        raise ValueError(
            f"expected maps [B, K, H, W] and cells [B, K], got {tuple(maps.shape)} and {tuple(cells.shape)}"
        )
    h, w = maps.shape[-2:]
    if h % grid_size or w % grid_size:
        raise ValueError(f"map size {h}x{w} is not divisible by the grid size {grid_size}")
    keep = cells >= 0
    selected = maps[keep].float()
    finite = torch.isfinite(selected)
    invalid = ~finite.flatten(1).all(1)
    positive = torch.where(finite, selected, torch.zeros_like(selected)).clamp(min=0)
    blocks = positive.reshape(-1, grid_size, h // grid_size, grid_size, w // grid_size).sum(dim=(2, 4))
    per_cell = blocks.flatten(1)  # [m, n^2]
    total = per_cell.sum(1)
    inside = per_cell.gather(1, cells[keep].long().view(-1, 1))[:, 0]
    scores = torch.where(total > ZERO_TOTAL, inside / total.clamp(min=ZERO_TOTAL), torch.zeros_like(total))
    return scores, invalid


class LocalisationScore(Metric):
    """The grid localisation score, with its per-sample distribution.

    ``update(maps, cells)`` as in :func:`localisation_scores`; ``compute()`` returns ``mean``, ``median``,
    ``q1``, ``q3`` (quartiles), ``samples`` and ``invalid``; :meth:`scores` gives every per-sample score.

    Args:
        grid_size: ``n`` of the ``n x n`` grids.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, grid_size: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        if grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {grid_size}")
        self.grid_size = int(grid_size)
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("invalid", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, maps: Tensor, cells: Tensor) -> None:
        self.add_scores(*localisation_scores(maps, cells, self.grid_size))

    def add_scores(self, scores: Tensor, invalid: Tensor) -> None:
        """Adds scores already computed by :func:`localisation_scores` (``[m]`` each)."""
        self.values.append(scores)
        self.invalid += invalid.sum()

    def scores(self) -> Tensor:
        """Every per-sample score so far (``[N]``; synchronised across processes when distributed)."""
        if isinstance(self.values, Tensor):
            return self.values
        return dim_zero_cat(self.values) if self.values else torch.zeros(0, device=self.invalid.device)

    def compute(self) -> dict[str, Tensor]:
        values = self.scores()
        if values.numel() == 0:
            nan = torch.tensor(float("nan"), device=self.invalid.device)
            return {
                "mean": nan,
                "median": nan,
                "q1": nan,
                "q3": nan,
                "samples": torch.tensor(0.0, device=self.invalid.device),
                "invalid": self.invalid,
            }
        q = torch.quantile(values.float(), torch.tensor([0.25, 0.5, 0.75], device=values.device))
        return {
            "mean": values.mean(),
            "median": q[1],
            "q1": q[0],
            "q3": q[2],
            "samples": torch.tensor(float(values.numel()), device=values.device),
            "invalid": self.invalid,
        }


__all__ = ["ZERO_TOTAL", "LocalisationScore", "localisation_scores"]
