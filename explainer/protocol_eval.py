"""Controlled evaluation on grids: GridPG, DiFull and DiPart with ML-Att layers, AggAtt and smoothing.

The engine behind ``evaluate.py --protocol gridpg|difull|dipart`` (Rao, Boehle and Schiele, CVPR 2022):

1. the test grids come from :class:`~explainer.data.grid.GridDataModule` over the ``--data`` module,
   with cell images the classifier gets right with confidence >= ``--confidence``;
2. the classifier is wrapped for the protocol (:func:`~explainer.classifiers.protocols.wrap_for_protocol`);
3. every method explains the scored cells' classes (every cell for GridPG; the top-left and the repeated
   bottom-right cell for DiFull and DiPart) and :class:`~explainer.metrics.LocalisationScore` scores each
   map; rows ``{method, metric, value, n, stderr, targets}`` carry the mean, median and quartiles;
4. ``aggatt/<method>.png`` shows the AggAtt bins of the maps explaining the top-left cell, ``aggatt.png``
   all methods on one shared colour scale, ``scores.png`` the score distributions as box plots.

Methods are expanded over ML-Att layers (``--layer input,final``: a method with a layer form runs once per
layer and its rows are named ``<method>@<layer>``) and smoothing (``--smooth K``: every map is smoothed
with a Gaussian of kernel K and sigma K/4, rows named ``<method>+smooth<K>``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from explainer.aggatt import save_aggatt
from explainer.data.batch import Batch
from explainer.data.grid import grid_targets
from explainer.metrics.localisation import LocalisationScore, localisation_scores

# methods with a layer form (ML-Att): the gradient family at any layer, the CAMs at a convolutional one
LAYER_METHODS = ("gradient", "input_x_gradient", "integrated_gradients", "gradcam", "gradcam++")
CAM_METHODS = ("gradcam", "gradcam++")
STATISTICS = ("mean", "median", "q1", "q3")


def expand_methods(methods: dict[str, dict[str, Any]], layers: list[str] | None, smooth: int | None
                   ) -> list[tuple[str, str, dict[str, Any], list[str]]]:
    """``(row name, method name, options, notes)`` for every method at every requested layer.

    A method without a layer form runs once, at the input, with a note; Grad-CAM has no input form and is
    skipped at ``input`` with a note. With ``smooth``, each entry is wrapped in the ``smooth`` method.
    """
    out: list[tuple[str, str, dict[str, Any], list[str]]] = []
    for name, options in methods.items():
        wanted = layers or [None]
        variants: list[tuple[str, dict[str, Any]]] = []
        notes: list[str] = []
        if layers and name not in LAYER_METHODS:
            variants.append((name, dict(options)))
            notes.append(f"{name} has no layer form: evaluated once, on the input")
        else:
            for layer in wanted:
                if layer == "input" and name in CAM_METHODS:
                    notes.append(f"{name} has no input-layer form: skipped at 'input'")
                    continue
                row = name if layer is None else f"{name}@{layer}"
                opts = dict(options)
                if layer is not None and layer != "input":
                    opts["layer"] = layer
                variants.append((row, opts))
        for row, opts in variants:
            if smooth is not None:
                if name == "smooth":
                    raise ValueError("--smooth cannot be combined with the 'smooth' method; use one of them")
                out.append((f"{row}+smooth{smooth}", "smooth",
                            {"method": name, "kernel_size": int(smooth), "options": opts}, notes))
            else:
                out.append((row, name, opts, notes))
            notes = []
    return out


def evaluate_grid_method(
    method: nn.Module,
    batches: list[Batch],
    protocol: str,
    grid_size: int,
    progress: Callable[[int], None] | None = None,
    keep_cell: int = 0,
) -> tuple[LocalisationScore, Tensor, Tensor, float]:
    """Scores one method on grid batches.

    Returns:
        The metric, the maps explaining ``keep_cell`` (``[N, H, W]``, on the CPU) and their scores ``[N]``
        (for AggAtt), and the method's seconds per grid.
    """
    metric = LocalisationScore(grid_size)
    kept_maps, kept_scores = [], []
    seconds, grids = 0.0, 0
    for batch in batches:
        classes, cells = grid_targets(batch, protocol, grid_size)
        start = time.perf_counter()
        maps = method(batch.image, classes).detach()
        seconds += time.perf_counter() - start
        grids += len(batch.image)
        scores, invalid = localisation_scores(maps, cells, grid_size)  # row-major over the (b, k) with a cell
        metric.to(maps.device).add_scores(scores, invalid)
        mine = cells[cells >= 0] == keep_cell
        if bool(mine.any()):
            kept_maps.append(maps[cells >= 0][mine].float().cpu())
            kept_scores.append(scores[mine].cpu())
        if progress is not None:
            progress(len(batch.image))
    h, w = batches[0].image.shape[-2:]
    maps_out = torch.cat(kept_maps) if kept_maps else torch.zeros(0, h, w)
    scores_out = torch.cat(kept_scores) if kept_scores else torch.zeros(0)
    return metric, maps_out, scores_out, seconds / max(grids, 1)


def metric_rows(name: str, protocol: str, metric: LocalisationScore, seconds: float, grids: int
                ) -> list[dict[str, Any]]:
    """Result rows of one method: the score statistics, invalid maps and seconds per grid."""
    values = metric.compute()
    scores = metric.scores()
    n = int(values["samples"])
    stderr = float(scores.float().std() / math.sqrt(n)) if n > 1 else float("nan")
    rows = [{"method": name, "metric": f"{protocol}.{key}", "value": float(values[key]), "n": n,
             "stderr": stderr if key == "mean" else None, "targets": protocol} for key in STATISTICS]
    rows.append({"method": name, "metric": f"{protocol}.invalid", "value": float(values["invalid"]), "n": n,
                 "stderr": None, "targets": protocol})
    rows.append({"method": name, "metric": "seconds_per_image", "value": seconds, "n": grids, "stderr": None,
                 "targets": protocol})
    return rows


def save_aggatt_figures(aggregates: dict[str, Tensor], out: Path, grid_size: int, protocol: str,
                        cell: int = 0) -> list[Path]:
    """``aggatt/<method>.png`` per method and ``aggatt.png`` with every method as a row; the bins of a method
    share one colour scale (its 99.5th percentile), so methods of different units stay comparable in shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from explainer.aggatt import AGGATT_PERCENTILES, draw_aggatt_row
    from explainer.callbacks.images import save_figure

    paths = []
    for name, bins in aggregates.items():
        safe = "".join(ch if ch.isalnum() or ch in "-_.@+" else "_" for ch in name)
        paths.append(save_aggatt(bins, out / "aggatt" / f"{safe}.png", grid_size, cell,
                                 title=f"{name}, {protocol} (cell {cell})"))
    if not aggregates:
        return paths
    names = list(aggregates)
    # every method scaled by its own 99.5th percentile, so methods of different units share the colour map
    fig, axes = plt.subplots(len(names), len(AGGATT_PERCENTILES) - 1, squeeze=False,
                             figsize=(1.5 * (len(AGGATT_PERCENTILES) - 1) + 1.2, 1.5 * len(names)))
    for i, name in enumerate(names):
        draw_aggatt_row(axes[i], aggregates[name], grid_size, cell, percentiles=AGGATT_PERCENTILES if i == 0 else None)
        axes[i, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"AggAtt, {protocol}: mean positive maps per percentile bin of the localisation score", fontsize=8)
    paths.append(save_figure(fig, out / "aggatt.png"))
    return paths


def save_score_boxplot(distributions: dict[str, Tensor], path: Path, protocol: str, grid_size: int) -> Path:
    """Box plots of the per-sample localisation scores of every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from explainer.callbacks.images import save_figure

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


__all__ = [
    "LAYER_METHODS",
    "evaluate_grid_method",
    "expand_methods",
    "metric_rows",
    "save_aggatt_figures",
    "save_score_boxplot",
]
