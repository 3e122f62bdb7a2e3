"""Callbacks of the in-filler: a progress panel each validation epoch and the export at the end of ``fit``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from explainer.checkpoint import read_checkpoint
from explainer.export_infiller import check_infiller_export_target, export_infiller, infill_panel_figure
from explainer.ops import IMAGENET_MEAN, IMAGENET_STD
from explainer.viz import log_figure


def _normalisation(pl_module: pl.LightningModule, datamodule: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    hp = pl_module.hparams
    mean = hp.get("data_mean") or getattr(datamodule, "mean", None) or IMAGENET_MEAN
    std = hp.get("data_std") or getattr(datamodule, "std", None) or IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class InfillPanel(pl.Callback):
    """Each validation epoch, a panel of validation images, their keep masks, the masked images and the
    in-fills, written to ``<run folder>/images/val-infills-epochXXX.png`` (and to wandb under wandb).

    Rows are the first images of the first validation batch, with the validation step's own masks (the same
    every epoch), so the panels of successive epochs show the same holes being filled.

    Args:
        num_images: rows of the panel.
    """

    def __init__(self, num_images: int = 6) -> None:
        super().__init__()
        self.num_images = num_images
        self._data: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not isinstance(outputs, dict) or "completed" not in outputs:
            return
        n = self.num_images
        self._data = (
            batch.image[:n].detach().float().cpu(),
            outputs["keep"][:n].detach().float().cpu(),
            outputs["completed"][:n].detach().float().cpu(),
        )

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._data is None:
            return
        images, keep, completed = self._data
        mean, std = _normalisation(pl_module, trainer.datamodule)
        fig = infill_panel_figure(
            images, keep, {"in-filled": completed}, mean, std, title=f"in-fills, epoch {trainer.current_epoch}"
        )
        log_figure(trainer, "val/infills", fig)
        self._data = None


class ExportInfiller(pl.Callback):
    """At the end of ``fit``, exports the best checkpoint's in-filler network to a folder (see
    :mod:`explainer.export_infiller`), with ``examples.png`` of validation in-fills.

    Args:
        folder: the export folder.
        overwrite: replace an existing in-filler export in that folder.
        num_examples: validation images shown in ``examples.png``.
    """

    def __init__(self, folder: str = "checkpoints/infiller", overwrite: bool = False, num_examples: int = 6) -> None:
        super().__init__()
        self.folder = folder
        self.overwrite = overwrite
        self.num_examples = num_examples
        self.exported: Path | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_infiller_export_target(Path(self.folder), self.overwrite)  # fail before training, not after

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.interrupted:
            return
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        net = pl_module.net
        current = {k: v.detach().clone() for k, v in net.state_dict().items()}
        training: dict[str, Any] = {
            "loss": "L1 inside the dropped region",
            "source": best or "the final weights",
            "epochs": int(trainer.current_epoch),
            "steps": int(trainer.global_step),
            "masks": {
                k: (list(v) if isinstance(v, (list, tuple)) else v)
                for k, v in pl_module.hparams.items()
                if k in ("grid_share", "drop_area", "blob_cells", "grid_cells")
            },
        }
        if best:
            ckpt = read_checkpoint(best)
            net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
            score = getattr(trainer.checkpoint_callback, "best_model_score", None)
            if score is not None:
                training["best_score"] = {"monitor": trainer.checkpoint_callback.monitor, "value": float(score)}
        dm = trainer.datamodule
        images = keep = None
        if dm is not None and self.num_examples:
            images = next(iter(dm.val_dataloader())).image[: self.num_examples]
            keep = pl_module.masks_for(images, torch.Generator().manual_seed(10_000))
        mean, std = _normalisation(pl_module, dm)
        size = pl_module.image_size or (tuple(images.shape[-2:]) if images is not None else None)
        if size is None:
            raise ValueError(
                "the in-filler's image size is unknown (no data module image_size and no batch seen): nothing "
                "was exported"
            )
        try:
            self.exported = export_infiller(
                net,
                self.folder,
                image_size=size,
                mean=mean,
                std=std,
                training=training,
                example_images=images,
                example_masks=keep,
                overwrite=self.overwrite,
            )
        finally:
            net.load_state_dict(current)
        rank_zero_info(f"in-filler exported to {self.exported} (from {best or 'the final weights'})")


__all__ = ["ExportInfiller", "InfillPanel"]
