"""ClassifierModule: trains the multi-label classifier that is later explained (the Explanandum)."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score

from explainer.classifiers.factory import build_classifier
from explainer.classifiers.source import load_classifier
from explainer.data.batch import Batch
from explainer.losses import classification_loss
from explainer.losses_fastshap import cell_masks, distillation_loss, uniform_size_sample
from explainer.modules.guards import SafeLoading, stop_if_not_finite
from explainer.modules.schedules import Schedule, with_schedule
from explainer.modules.stage_means import log_mean
from explainer.ops import random_blob_masks


class ClassifierModule(SafeLoading, pl.LightningModule):
    """Multi-label classification with BCE-with-logits, Adam, and mAP / F1 on validation and test.

    Args:
        backbone: a factory name (``digitnet``, ``resnet18``, ``resnet50``, ``vgg16``, a timm name, or
            ``package.module:factory``); see :func:`explainer.classifiers.build_classifier`.
        num_classes: number of classes (linked from the data module by ``train.py``).
        class_names: class names (linked from the data module), stored for later stages.
        weights: backbone weights, a torchvision weights name or a state-dict file.
        freeze_backbone: train the head only (the paper's protocol) instead of everything.
        lr: Adam learning rate (the peak rate with ``scheduler="onecycle"``).
        weight_decay: Adam weight decay.
        scheduler: ``none`` (the paper's constant rate), ``onecycle`` or ``cosine`` over the whole run.
        activation: ``sigmoid``, a multi-label classifier trained with BCE (the paper's), or ``softmax``, a
            single-label classifier trained with cross-entropy (for data with one label per image; the
            Explainer then uses the softmax objective).
        random_masks: train, validate and test on images masked at random (binary blob masks, the masked-out
            pixels at the mean colour): the *evaluator* of the encoding check (Jethani et al., 2021), a copy
            of the classifier's architecture that reads masked images in general (``evaluate.py
            --evaluator``).
        mask_area: the range of the share of the image a random mask keeps.
        teacher: train against a frozen classifier's probabilities on the clean image (soft targets: KL for
            ``softmax``, per-class Bernoulli cross-entropy for ``sigmoid``) instead of the labels: a
            ``ClassifierModule`` checkpoint or any classifier spec (:mod:`explainer.classifiers.source`). With
            ``mask_cells`` this is FastSHAP's surrogate (Jethani et al., 2022): a copy of the classifier's
            architecture that gives the classifier's expected output when cells are removed
            (``configs/quickstart/surrogate.yaml``). The teacher is not stored in the checkpoints.
        mask_cells: remove a random subset of the cells of a ``mask_cells x mask_cells`` grid from every
            training, validation and test image (the removed pixels at the mean colour, 0 in normalised space):
            a size uniform on ``0..d`` cells, then a uniform subset of that size. 0: no cell masks.
        init_from_teacher: start from the teacher's weights (the same architecture), the surrogate's usual start.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 10,
        class_names: list[str] | None = None,
        weights: str | None = None,
        freeze_backbone: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: Schedule = "none",
        activation: Literal["sigmoid", "softmax"] = "sigmoid",
        random_masks: bool = False,
        mask_area: tuple[float, float] = (0.05, 0.95),
        teacher: str | dict[str, Any] | None = None,
        mask_cells: int = 0,
        init_from_teacher: bool = False,
    ) -> None:
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
        if not 0 <= mask_area[0] <= mask_area[1] <= 1:
            raise ValueError(f"mask_area must be a range within [0, 1], got {list(mask_area)}")
        if mask_cells < 0 or (mask_cells and random_masks):
            raise ValueError(
                f"mask_cells={mask_cells}: give a grid side >= 1 (0: none), and not together with random_masks"
            )
        self.save_hyperparameters()
        self.net = build_classifier(backbone, num_classes, weights)
        self.teacher = None
        if teacher is not None:
            self.teacher = load_classifier(teacher, num_classes=num_classes)
            if self.teacher.activation != activation:
                raise ValueError(
                    f"the teacher '{self.teacher.reference}' gives {self.teacher.activation} probabilities but this "
                    f"classifier is trained with activation={activation}; set activation: {self.teacher.activation}"
                )
            if init_from_teacher:
                own, given = self.net.state_dict(), self.teacher.net.state_dict()
                if set(own) != set(given) or any(own[k].shape != given[k].shape for k in own):
                    raise ValueError(
                        f"init_from_teacher: the teacher '{self.teacher.reference}' is not a '{backbone}' with "
                        f"{num_classes} classes; set backbone to the teacher's architecture or init_from_teacher: false"
                    )
                self.net.load_state_dict(given)
        elif init_from_teacher:
            raise ValueError("init_from_teacher needs a teacher; set teacher: <classifier checkpoint>")
        if freeze_backbone:
            if self.net.features is None:
                raise ValueError(f"cannot freeze the backbone of opaque classifier '{backbone}'")
            self.net.features.requires_grad_(False)
        metrics = MetricCollection(
            {
                "mAP": MultilabelAveragePrecision(num_labels=num_classes, average="macro"),
                "F1": MultilabelF1Score(num_labels=num_classes, average="macro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def train(self, mode: bool = True) -> ClassifierModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        if self.hparams.freeze_backbone and self.net.features is not None:
            self.net.features.eval()  # a frozen backbone keeps its BatchNorm statistics
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]``."""
        return self.net(images)

    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        images = batch.image
        if self.hparams.random_masks:  # masked-out pixels take the mean colour: 0 in normalised space
            masks = random_blob_masks(len(images), tuple(images.shape[-2:]), tuple(self.hparams.mask_area))
            images = images * masks.to(device=images.device, dtype=images.dtype)
        clean = images
        if self.hparams.mask_cells:  # removed cells at the mean colour: 0 in normalised space
            g = int(self.hparams.mask_cells)
            keep = cell_masks(uniform_size_sample(len(images), g * g), g, images.shape[-2:])
            images = images * keep.to(device=images.device, dtype=images.dtype)
        logits = self(images)
        if logits.shape != batch.labels.shape:
            raise ValueError(
                f"the classifier gives logits of shape {tuple(logits.shape)} for labels of shape "
                f"{tuple(batch.labels.shape)}: class-count mismatch between the model "
                f"({logits.shape[-1]}) and the data module ({batch.labels.shape[-1]})"
            )
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(clean)
            soft = (
                torch.softmax(teacher_logits, 1) if self.hparams.activation == "softmax" else teacher_logits.sigmoid()
            )
            loss = distillation_loss(logits, soft, self.hparams.activation)
        else:
            loss = classification_loss(logits, batch.labels, self.hparams.activation)
        log_mean(self, f"{stage}/loss", loss, len(batch), prog_bar=True)
        if stage != "train":
            metrics = self.val_metrics if stage == "val" else self.test_metrics
            metrics.update(logits.detach(), batch.labels.long())
            self.log_dict(metrics, prog_bar=stage == "val", batch_size=len(batch))
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        stop_if_not_finite(self, self.net, "classifier weights or buffers")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self(batch.image)
        return torch.softmax(logits, 1) if self.hparams.activation == "softmax" else torch.sigmoid(logits)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return with_schedule(optimizer, self.hparams.scheduler, self, self.hparams.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the teacher is stored by reference (hyper-parameter ``teacher``), not by its weights
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.teacher is not None:
            for key, value in self.teacher.state_dict().items():
                checkpoint["state_dict"].setdefault(f"teacher.{key}", value)
        stored = checkpoint.get("hyper_parameters", {}).get("num_classes")
        if stored is not None and int(stored) != int(self.hparams.num_classes):
            raise ValueError(
                f"class-count mismatch: the checkpoint's classifier has {stored} classes but this run's data "
                f"module has {self.hparams.num_classes}"
            )
