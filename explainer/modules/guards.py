"""Training stops loudly when weights or buffers stop being finite (a diverged run exports nothing)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from explainer.trust import loading_from


def non_finite_tensors(module: nn.Module) -> list[str]:
    """The names of ``module``'s floating-point parameters and buffers holding NaN or inf (one device sync
    when all are finite)."""
    named = [
        (n, t)
        for n, t in itertools.chain(module.named_parameters(), module.named_buffers())
        if t.is_floating_point() and t.numel()
    ]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t).all() for _, t in named])
    if bool(flags.all()):
        return []
    return [n for (n, _), ok in zip(named, flags.tolist(), strict=True) if not ok]


def stop_if_not_finite(lightning_module: pl.LightningModule, trained: nn.Module, what: str) -> None:
    """Raises ``FloatingPointError`` naming the tensors, the step and the fix when ``trained`` diverged."""
    bad = non_finite_tensors(trained)
    if not bad:
        return
    trainer = lightning_module._trainer
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer is not None else ""
    raise FloatingPointError(
        f"non-finite {what} after step {lightning_module.global_step} (epoch {lightning_module.current_epoch}): "
        f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Training stopped and nothing was exported"
        + (f"; the last good checkpoint is {best}" if best else "")
        + ". Lower the learning rate or check the data."
    )


class SafeLoading:
    """Mixin of the project's LightningModules: ``load_from_checkpoint`` treats the checkpoint as data.

    Lightning rebuilds a module from its checkpoint's hyper-parameters. Here a ``package.module:factory``
    backbone among them is refused before any import unless registered or allowed
    (``allow_factories``, ``EXPLAINER_ALLOW_FACTORIES``; see :mod:`explainer.trust`).
    """

    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path: Any, *args: Any, allow_factories: Iterable[str] = (), **kwargs: Any
    ) -> Any:
        with loading_from(f"the checkpoint {checkpoint_path}", allow_factories):
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[misc]


__all__ = ["SafeLoading", "non_finite_tensors", "stop_if_not_finite"]
