"""Validation and test means that equal one process's under DDP, whatever the shard sizes."""

from __future__ import annotations

import lightning.pytorch as pl
from torch import Tensor, nn
from torchmetrics import MeanMetric


def log_mean(module: pl.LightningModule, name: str, value: Tensor, batch_size: int, prog_bar: bool = False) -> None:
    """Logs the epoch mean of ``value`` over the samples of every rank.

    Training values are logged as they are (per step). Validation and test values go through a
    ``MeanMetric`` weighted by the batch size, whose sum states Lightning synchronises: with shards of
    unequal size (an unpadded split under DDP) the mean is the one of a single process, where averaging the
    ranks' own means would weight a small shard as much as a large one.
    """
    if name.startswith("train/"):
        module.log(name, value, prog_bar=prog_bar, batch_size=batch_size)
        return
    means = getattr(module, "_stage_means", None)
    if means is None:
        means = nn.ModuleDict()
        module.add_module("_stage_means", means)
    key = name.replace("/", "__").replace(".", "_")
    if key not in means:
        means[key] = MeanMetric().to(value.device)
    metric = means[key]
    metric.update(value.detach(), weight=batch_size)
    module.log(
        name,
        metric,
        prog_bar=prog_bar,
        on_step=False,
        on_epoch=True,
        batch_size=batch_size,
        metric_attribute=f"_stage_means.{key}",
    )


__all__ = ["log_mean"]
