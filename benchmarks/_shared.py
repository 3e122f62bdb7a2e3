"""What several benchmark scripts build the same way (imported as a sibling module by the scripts)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from explainer.modules import ClassifierModule


def untrained_classifier_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A ``ClassifierModule`` checkpoint of digitnet with random weights, written as ``train.py`` writes one."""
    torch.manual_seed(seed)
    module = ClassifierModule(backbone="digitnet", num_classes=10, class_names=[str(i) for i in range(10)])
    trainer = pl.Trainer(
        max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(folder)
    )
    trainer.strategy.connect(module)
    path = Path(folder) / "classifier.ckpt"
    trainer.save_checkpoint(path, weights_only=False)
    return path
