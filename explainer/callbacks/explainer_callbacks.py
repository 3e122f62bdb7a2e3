"""Callbacks of the Explainer: validation/test metrics, an image panel, and export at the end of training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MultilabelAccuracy, MultilabelF1Score

from explainer.checkpoint import read_checkpoint
from explainer.evaluation.suite import (
    SPECS,
    EvaluationSettings,
    StepInputs,
    SuiteContext,
    build_suite,
    ground_truth_source,
    unit_maps,
)
from explainer.export import check_export_target, export_explainer
from explainer.ops import gather_classes, present_classes
from explainer.viz import as_rgb, log_figure


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=1).clamp(min=1e-16)
    return -(p * p.log()).sum(dim=1)


class ExplainerMetrics(pl.Callback):
    """Metrics of an :class:`~explainer.modules.ExplainerModule` on validation and test.

    Logged as ``<stage>/<targets>/<metric>``, where ``<targets>`` is ``labels`` or ``predictions`` (the
    classes the target mask covered). Every metric is a torchmetrics Metric with sum-reduced states, so
    the values are synchronised across DDP ranks.

    Always: ``masked_accuracy`` / ``masked_f1`` (the classifier on ``m * x`` against the targets),
    ``target_area``, ``nontarget_area`` (mean mask areas), ``inverse_entropy`` (mean entropy of the
    classifier's softmax on ``(1 - m) * x``). Where the batch has ground-truth masks or boxes, the metrics of
    :mod:`explainer.metrics` (pointing game, segmentation metrics, saliency metric) are added.

    Args:
        pointing_tolerance: pointing-game tolerance in pixels at the original image size; ``None`` scales
            TorchRay's 15 px at 224 px to the image size (15/224 of the shorter side).
        ground_truth: ``auto`` (masks when the batch has them, else boxes), ``masks`` or ``boxes``.
    """

    def __init__(self, pointing_tolerance: float | None = None, ground_truth: str = "auto") -> None:
        super().__init__()
        self.pointing_tolerance = pointing_tolerance
        self.ground_truth = ground_truth
        self.metrics: dict[str, nn.ModuleDict] = {}

    VALIDATION_METRICS = ("pointing_game", "segmentation", "box_iou", "saliency")
    """The metric groups of the suite computed where the batch has ground truth (same names as evaluate.py)."""

    def _make(self, num_classes: int, device: torch.device, batch: Any, classifier: nn.Module) -> nn.ModuleDict:
        source = ground_truth_source(batch) if self.ground_truth == "auto" else self.ground_truth
        ground_truth: dict[str, nn.Module] = {}
        if source != "none" and source is not None:
            settings = EvaluationSettings(
                metrics=list(self.VALIDATION_METRICS), pointing_tolerance=self.pointing_tolerance
            )
            context = SuiteContext(classifier, num_classes, source, settings)
            ground_truth = build_suite(settings.metrics, context, has_boxes=batch.boxes is not None)
        return nn.ModuleDict(
            {
                **ground_truth,
                "classification": MetricCollection(
                    {
                        "masked_accuracy": MultilabelAccuracy(num_labels=num_classes, average="micro"),
                        "masked_f1": MultilabelF1Score(num_labels=num_classes, average="macro"),
                    }
                ),
                "target_area": MeanMetric(),
                "nontarget_area": MeanMetric(),
                "inverse_entropy": MeanMetric(),
            }
        ).to(device)

    def _stage_metrics(self, stage: str, pl_module: pl.LightningModule, batch: Any) -> nn.ModuleDict:
        if stage not in self.metrics:
            self.metrics[stage] = self._make(
                int(pl_module.hparams.num_classes), pl_module.device, batch, pl_module.classifier
            )
        return self.metrics[stage]

    def _update(self, stage: str, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> None:
        if not isinstance(outputs, dict) or "mask_logits" not in outputs:
            return
        m = self._stage_metrics(stage, pl_module, batch)
        targets = outputs["targets"]
        groups = [name for name in SPECS if name in m]
        if groups:
            classes = present_classes(targets)
            maps = gather_classes(torch.sigmoid(outputs["mask_logits"]), classes)
            inputs = StepInputs(batch.image, maps, unit_maps(maps, unit_range=True), classes, batch, targets)
            for name in groups:
                m[name].update(*SPECS[name].arguments(inputs))
        m["classification"].update(pl_module.classifier.probabilities(outputs["masked_logits"]), targets.long())
        m["target_area"].update(outputs["target_mask"].flatten(1).mean(1))
        m["nontarget_area"].update(outputs["nontarget_mask"].flatten(1).mean(1))
        m["inverse_entropy"].update(_entropy(outputs["inverse_logits"]))

    def _log(self, stage: str, pl_module: pl.LightningModule) -> None:
        if stage not in self.metrics:
            return
        m = self.metrics[stage]
        prefix = f"{stage}/{pl_module.hparams.targets}/"
        values = {f"{prefix}{k}": v for k, v in m["classification"].compute().items()}
        for name in ("target_area", "nontarget_area", "inverse_entropy"):
            values[f"{prefix}{name}"] = m[name].compute()
        for name in SPECS:
            if name in m:
                computed = m[name].compute()
                values.update(
                    {
                        f"{prefix}{name}.{key}": computed[key].float()
                        for key in SPECS[name].keys
                        if key in computed and key != "invalid"
                    }
                )
        pl_module.log_dict(values, sync_dist=False)
        for metric in m.values():
            metric.reset()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._update("val", pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log("val", pl_module)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update("test", pl_module, outputs, batch)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log("test", pl_module)


class MaskPanel(pl.Callback):
    """Each validation epoch, a panel of images, target masks, per-class masks and masked images.

    Rows are validation images (from the first batch); columns: the image, its target mask, the masks
    of its target classes (up to ``classes_shown``), and the masked image ``m * x``.

    Args:
        num_images: rows of the panel.
        classes_shown: per-class mask columns.
    """

    def __init__(self, num_images: int = 6, classes_shown: int = 3) -> None:
        super().__init__()
        self.num_images = num_images
        self.classes_shown = classes_shown
        self._data: dict[str, torch.Tensor] | None = None

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
        if not isinstance(outputs, dict) or "mask_logits" not in outputs:
            return
        n = self.num_images
        fill = pl_module.fill_for(batch.image[:n])
        m = outputs["target_mask"][:n]
        self._data = {
            "image": batch.image[:n].detach().cpu(),
            "masked": (m * batch.image[:n] + (1 - m) * fill).detach().cpu(),
            "target_mask": m.detach().cpu(),
            "masks": torch.sigmoid(outputs["mask_logits"][:n]).detach().cpu(),
            "targets": outputs["targets"][:n].detach().cpu(),
        }

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._data is None:
            return
        fig = mask_panel_figure(
            self._data, getattr(pl_module, "class_names", None), trainer.datamodule, self.classes_shown
        )
        fig.suptitle(
            f"Explainer masks, epoch {trainer.current_epoch} (targets: {pl_module.hparams.targets})", fontsize=9
        )
        log_figure(trainer, "val/masks", fig)
        self._data = None


def mask_panel_figure(
    data: dict[str, torch.Tensor], class_names: list[str] | None, datamodule: Any, classes_shown: int = 3
) -> Any:
    """The figure of :class:`MaskPanel` from its collected tensors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb = as_rgb(data["image"], datamodule).permute(0, 2, 3, 1).numpy()
    masked = as_rgb(data["masked"], datamodule).permute(0, 2, 3, 1).numpy()
    rows, cols = len(rgb), 3 + classes_shown
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    names = class_names or [str(i) for i in range(data["masks"].shape[1])]
    for i in range(rows):
        axes[i, 0].imshow(rgb[i])
        axes[i, 1].imshow(data["target_mask"][i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        shown = data["targets"][i].nonzero().flatten().tolist()[:classes_shown]
        for j, cls in enumerate(shown):
            axes[i, 2 + j].imshow(data["masks"][i, cls].numpy(), cmap="magma", vmin=0, vmax=1)
            axes[i, 2 + j].set_title(f"class {names[cls]}", fontsize=7)
        axes[i, cols - 1].imshow(masked[i])
    for j, title in [(0, "image"), (1, "target mask"), (cols - 1, "masked image")]:
        axes[0, j].set_title(title, fontsize=7)
    return fig


class ExportExplainer(pl.Callback):
    """At the end of ``fit``, exports the best checkpoint's mask network to a folder.

    Args:
        folder: the export folder (``checkpoints/<name>``).
        overwrite: replace an existing export in that folder.
        torchscript: also write ``model.ts``.
        num_examples: validation images shown in ``examples.png``.
    """

    def __init__(
        self,
        folder: str = "checkpoints/explainer",
        overwrite: bool = False,
        torchscript: bool = False,
        num_examples: int = 6,
    ) -> None:
        super().__init__()
        self.folder = folder
        self.overwrite = overwrite
        self.torchscript = torchscript
        self.num_examples = num_examples
        self.exported: Path | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # fail before training, not after
        source = getattr(pl_module.hparams, "init_from", None)
        if source and Path(source).resolve() == Path(self.folder).resolve():
            raise ValueError(
                f"the export folder {self.folder} is the Explainer this run starts from (init_from); exporting "
                "would replace it. Set another folder for the ExportExplainer callback in your config (its "
                "'folder' argument), or start from a copy of the export"
            )
        check_export_target(Path(self.folder), self.overwrite)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.interrupted:
            return
        if hasattr(pl_module, "check_classifier_unchanged"):  # never export against a classifier that moved
            pl_module.check_classifier_unchanged()
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        state = None
        if best:
            ckpt = read_checkpoint(best)
            state = {k[len("mask_net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("mask_net.")}
        current = {k: v.detach().clone() for k, v in pl_module.mask_net.state_dict().items()}
        if state is not None:
            pl_module.mask_net.load_state_dict(state)
        dm = trainer.datamodule
        examples = None
        if dm is not None and self.num_examples:
            batch = next(iter(dm.val_dataloader()))
            examples = batch.image[: self.num_examples]
        try:
            self.exported = export_explainer(
                pl_module,
                self.folder,
                mean=getattr(dm, "mean", None),
                std=getattr(dm, "std", None),
                input_size=tuple(examples.shape[-2:]) if examples is not None else None,
                example_images=examples,
                torchscript=self.torchscript,
                overwrite=self.overwrite,
            )
        finally:
            pl_module.mask_net.load_state_dict(current)
        rank_zero_info(f"Explainer exported to {self.exported} (from {best or 'the final weights'})")
