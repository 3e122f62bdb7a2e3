"""Small models for tests (importable as ``tests.helpers:...`` by the classifier factory)."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
from torch import nn

from explainer.classifiers.factory import ClassifierNet


def tiny_net(num_classes: int) -> ClassifierNet:
    """A two-layer CNN with BatchNorm and dropout, for fast tests."""
    features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
    )
    return ClassifierNet(features, nn.Sequential(nn.Dropout(0.5), nn.Linear(16, num_classes)), name="tiny")


def opaque_net(num_classes: int) -> nn.Module:
    """A plain nn.Module without a features/head split."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)
    )


def write_classifier_checkpoint(
    folder, num_classes: int = 10, backbone: str = "tests.helpers:tiny_net", seed: int = 0, class_names=None
):
    """Writes a ClassifierModule checkpoint (random weights) as train.py would; returns (module, path)."""
    import lightning.pytorch as pl
    import torch

    from explainer.modules import ClassifierModule

    torch.manual_seed(seed)
    module = ClassifierModule(
        backbone=backbone, num_classes=num_classes, class_names=class_names or [str(i) for i in range(num_classes)]
    )
    with torch.no_grad():  # non-trivial BatchNorm statistics
        module.train()(torch.randn(16, 3, 32, 32) * 2 + 0.5)
    module.eval()
    trainer = pl.Trainer(
        max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(folder)
    )
    trainer.strategy.connect(module)
    path = folder / f"classifier-{num_classes}.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = "explainer.modules.ClassifierModule"
    torch.save(ckpt, path)
    return module, path


class KillAtStep(pl.Callback):
    """SIGKILLs its own process when ``global_step`` reaches ``step``, right after that step's checkpoint was
    written: a run killed from outside at that moment."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
