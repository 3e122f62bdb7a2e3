"""Run folders: where a training run writes its checkpoints, config, metrics and pictures.

Used by the callbacks, the figures and the CLIs alike (it depends on Lightning only).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger


def run_dir(trainer: pl.Trainer) -> Path:
    """This run's own folder, ``<save_dir>/<name>/<version>`` (where ModelCheckpoint writes too)."""
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version


def finish_loggers(trainer: pl.Trainer) -> None:
    """Closes the run's wandb run, so that a later run in the same process gets its own."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


__all__ = ["finish_loggers", "run_dir"]
