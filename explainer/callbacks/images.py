"""Picture callbacks during training: a PNG in the run folder and, with wandb, a wandb image (drawn with
:mod:`explainer.viz`)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from explainer.viz import as_rgb, log_figure


class PredictionPanel(pl.Callback):
    """Each validation epoch, a panel of validation images titled with their true and predicted labels.

    Args:
        num_images: images in the panel (taken from the first validation batch).
        threshold: probability above which a class counts as predicted.
    """

    def __init__(self, num_images: int = 16, threshold: float = 0.5) -> None:
        super().__init__()
        self.num_images = num_images
        self.threshold = threshold
        self._batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0 and trainer.is_global_zero and not trainer.sanity_checking:
            n = self.num_images
            with torch.no_grad():
                probs = torch.sigmoid(pl_module(batch.image[:n]))
            self._batch = (batch.image[:n].cpu(), batch.labels[:n].cpu(), probs.cpu())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batch is None or not trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        images, labels, probs = self._batch
        names = getattr(trainer.datamodule, "class_names", None) or [str(i) for i in range(labels.shape[1])]
        rgb = as_rgb(images, trainer.datamodule).permute(0, 2, 3, 1).numpy()
        cols = min(8, len(rgb))
        rows = (len(rgb) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for i, ax in enumerate(axes.flat[: len(rgb)]):
            true = {names[c] for c in labels[i].nonzero().flatten().tolist()}
            pred = {names[c] for c in (probs[i] > self.threshold).nonzero().flatten().tolist()}
            ax.imshow(rgb[i])
            ax.set_title(
                f"true {','.join(sorted(true))}\npred {','.join(sorted(pred))}",
                fontsize=7,
                color="green" if true == pred else "red",
            )
        fig.suptitle(f"validation predictions, epoch {trainer.current_epoch}", fontsize=9)
        log_figure(trainer, "val/predictions", fig)
        self._batch = None
