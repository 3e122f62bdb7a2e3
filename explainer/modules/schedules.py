"""Learning-rate schedules over a whole run, shared by the classifier and the learned explainers."""

from __future__ import annotations

from typing import Any, Literal

import torch

Schedule = Literal["none", "onecycle", "cosine"]
SCHEDULES = ("none", "onecycle", "cosine")


def with_schedule(optimizer: torch.optim.Optimizer, schedule: str, module: Any, lr: float) -> Any:
    """``configure_optimizers``'s return value: the optimizer, with ``schedule`` stepped once per batch.

    Args:
        optimizer: the optimizer.
        schedule: ``none`` (a constant rate, the papers'), ``onecycle`` (warm-up to ``lr`` and annealing, over
            the run's steps) or ``cosine`` (annealing from ``lr``).
        module: the LightningModule (its trainer's estimate of the run's optimizer steps; with ``none`` the
            module need not be attached to a trainer).
        lr: the peak rate.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown scheduler '{schedule}'; expected one of {SCHEDULES}")
    if schedule == "none":
        return optimizer
    steps = max(1, int(module.trainer.estimated_stepping_batches))
    if schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["SCHEDULES", "Schedule", "with_schedule"]
