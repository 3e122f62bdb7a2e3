"""InfillerModule: trains FIDO's learned in-filler (Chang et al., ICLR 2019) on a data module's images.

Each training image gets a random keep mask of one of the two kinds that perturbation explainers hand an
in-filler: random blobs (:func:`~explainer.ops.random_blob_masks`, the masks of the Explainer and of the
encoding check) and random cells of a coarse grid (:func:`~explainer.ops.random_grid_masks`, FIDO's
upsampled and rounded Concrete masks). The network sees ``keep * x`` and ``keep`` and is trained with the
L1 distance to the clean image inside the dropped region (the mean over dropped pixels and channels).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from explainer.data.batch import Batch
from explainer.modules.guards import SafeLoading, stop_if_not_finite
from explainer.modules.stage_means import log_mean
from explainer.nets.infiller import InfillerNet
from explainer.ops import random_blob_masks, random_grid_masks


def hole_l1(completed: Tensor, images: Tensor, keep: Tensor) -> Tensor:
    """The mean absolute error over the dropped pixels (``keep == 0``) and channels.

    Args:
        completed: ``[N, 3, H, W]`` in-filled images.
        images: ``[N, 3, H, W]`` clean images.
        keep: ``[N, 1, H, W]`` keep masks.

    Returns:
        A scalar; 0 when nothing is dropped.
    """
    dropped = 1 - keep.to(images.dtype)
    total = ((completed - images).abs() * dropped).sum()
    return total / (dropped.sum() * images.shape[1]).clamp_min(1.0)


def training_masks(
    count: int,
    size: tuple[int, int],
    grid_share: float,
    drop_area: tuple[float, float],
    blob_cells: tuple[int, int],
    grid_cells: tuple[int, int],
    generator: torch.Generator | None = None,
) -> Tensor:
    """``[count, 1, H, W]`` keep masks: a share ``grid_share`` of coarse-grid masks, the rest blob masks.

    Both kinds drop a share of the image drawn uniformly from ``drop_area`` (blobs exactly, grid masks in
    expectation).
    """
    grid = torch.rand(count, generator=generator) < grid_share
    masks = torch.empty(count, 1, *size)
    n_grid = int(grid.sum())
    if n_grid:
        masks[grid] = random_grid_masks(n_grid, size, drop_area, grid_cells, generator=generator)
    if n_grid < count:
        kept = (1 - drop_area[1], 1 - drop_area[0])
        masks[~grid] = random_blob_masks(count - n_grid, size, kept, blob_cells, generator=generator)
    return masks


class InfillerModule(SafeLoading, pl.LightningModule):
    """Trains an :class:`~explainer.nets.infiller.InfillerNet` to in-fill randomly dropped regions.

    The data module's image size and normalisation are recorded in the hyper-parameters at setup (and so in
    every checkpoint and export); given explicitly, they must match the data module's.

    Args:
        width: channels of the network at half resolution.
        depth: halvings of the network after the first.
        lr: Adam learning rate (the peak rate with ``scheduler="onecycle"``).
        weight_decay: Adam weight decay.
        scheduler: ``none``, ``onecycle`` or ``cosine`` over the whole run.
        grid_share: the share of training masks that are coarse-grid masks (the rest are blobs).
        drop_area: the range of the share of the image a training mask drops.
        blob_cells: the range of the noise-grid side of the blob masks (fewer cells: bigger blobs).
        grid_cells: the range of the grid side of the grid masks (16 at 64 px is FIDO's grid).
        num_classes: the data module's class count (linked by ``train.py``; recorded, not used: the in-filler
            is trained on images, not labels).
        class_names: the data module's class names (linked, recorded).
        data_image_size: ``(H, W)`` of the training images; ``None``: read from the data module at setup.
        data_mean: the images' normalisation mean; ``None``: the data module's.
        data_std: the images' normalisation standard deviation; ``None``: the data module's.
    """

    def __init__(
        self,
        width: int = 24,
        depth: int = 2,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        scheduler: Literal["none", "onecycle", "cosine"] = "onecycle",
        grid_share: float = 0.5,
        drop_area: tuple[float, float] = (0.1, 0.9),
        blob_cells: tuple[int, int] = (2, 8),
        grid_cells: tuple[int, int] = (2, 16),
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        data_image_size: tuple[int, int] | None = None,
        data_mean: tuple[float, float, float] | None = None,
        data_std: tuple[float, float, float] | None = None,
    ) -> None:
        super().__init__()
        if scheduler not in ("none", "onecycle", "cosine"):
            raise ValueError(f"unknown scheduler '{scheduler}'; expected none, onecycle or cosine")
        if not 0 <= grid_share <= 1:
            raise ValueError(f"grid_share must lie in [0, 1], got {grid_share}")
        if not 0 <= drop_area[0] <= drop_area[1] <= 1:
            raise ValueError(f"drop_area must be a range within [0, 1], got {list(drop_area)}")
        self.save_hyperparameters()
        self.net = InfillerNet(width=width, depth=depth)

    def forward(self, images: Tensor, keep: Tensor) -> Tensor:
        """The in-filled images (see :class:`~explainer.nets.infiller.InfillerNet`)."""
        return self.net(images, keep)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the training images (``None`` before setup)."""
        size = self.hparams.data_image_size
        return (int(size[0]), int(size[1])) if size is not None else None

    def setup(self, stage: str) -> None:
        """Records the data module's image size and normalisation, or checks them against those given."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None:
            return
        size = getattr(dm, "image_size", None)
        found = {
            "data_image_size": None if size is None else [int(size)] * 2 if isinstance(size, int) else list(size),
            "data_mean": [float(v) for v in getattr(dm, "mean", None) or []] or None,
            "data_std": [float(v) for v in getattr(dm, "std", None) or []] or None,
        }
        for key, value in found.items():
            if value is None:
                continue
            given = self.hparams.get(key)
            if given is None:
                self.hparams[key] = value
            elif [float(v) for v in given] != [float(v) for v in value]:
                raise ValueError(
                    f"the in-filler's {key} is {list(given)} but the data module's is {value}: an in-filler fills "
                    f"images of one size and normalisation; drop model.init_args.{key} to take the data module's, "
                    "or train on data of that kind"
                )

    def masks_for(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Random keep masks ``[N, 1, H, W]`` for ``images`` (see :func:`training_masks`), on their device."""
        hp = self.hparams
        masks = training_masks(
            len(images),
            tuple(images.shape[-2:]),
            float(hp.grid_share),
            tuple(hp.drop_area),
            tuple(hp.blob_cells),
            tuple(hp.grid_cells),
            generator,
        )
        return masks.to(device=images.device, dtype=images.dtype)

    def _check_size(self, images: Tensor) -> None:
        size = self.image_size
        if size is None:
            self.hparams.data_image_size = [int(images.shape[-2]), int(images.shape[-1])]
        elif tuple(images.shape[-2:]) != size:
            raise ValueError(
                f"a batch of {tuple(images.shape[-2:])} images reached an in-filler trained at {size}: give the "
                "data module one image size"
            )

    def _step(self, batch: Batch, stage: str, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        images = batch.image
        self._check_size(images)
        keep = self.masks_for(images, generator)
        completed = self(images, keep)
        loss = hole_l1(completed, images, keep)
        log_mean(self, f"{stage}/loss", loss, len(images), prog_bar=True)
        return {"loss": loss, "keep": keep, "completed": completed}

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        stop_if_not_finite(self, self.net, "in-filler weights")

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        # the same masks every epoch (seeded by the batch index), so epochs compare
        return self._step(batch, "val", torch.Generator().manual_seed(10_000 + batch_idx))

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "test", torch.Generator().manual_seed(20_000 + batch_idx))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return optimizer
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        if hp.scheduler == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hp.lr, total_steps=steps)
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["InfillerModule", "hole_l1", "training_masks"]
