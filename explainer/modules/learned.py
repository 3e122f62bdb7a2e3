"""What every learned explainer shares: a frozen classifier, an explanation network, a fill, one training loop.

A learned explainer is a network trained against a frozen classifier so that one forward pass explains an
image. :class:`LearnedExplainerModule` holds what they all share:

* the classifier, loaded from any source (:mod:`explainer.classifiers.source`), frozen, its content hash
  recorded at the first run and checked on every later load and at the end of training;
* the explanation network, built by name from the mask-network registry (:func:`build_mask_net`), so a
  config and an export's ``config.json`` describe it with plain values;
* the fill, an :class:`~explainer.methods.infill.Infill` shared with FIDO/BBMP (``mean``, ``zero``,
  ``blur``, ``local_mean``, ``random`` or ``learned=<in-filler export>``);
* the training, validation and test steps, the optimiser, the finite-value guards, checkpoints that hold the
  network only, and :func:`explainer.export.export_explainer` / ``load().explain()``.

A subclass adds its network defaults and its loss: it implements :meth:`explain_batch` (a dict with
``loss`` and each name of :meth:`term_names`), and declares ``kind``, ``title`` and ``map_output`` (``mask_logits``,
masks through a sigmoid; ``values``, signed attributions used as they are).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from explainer.classifiers.frozen import state_hash
from explainer.classifiers.source import check_class_names, classifier_hparams, load_classifier
from explainer.data.batch import Batch
from explainer.export import read_mask_net_state
from explainer.methods.infill import BlurInfill, Infill, build_infill
from explainer.modules.guards import SafeLoading, stop_if_not_finite
from explainer.modules.schedules import Schedule, with_schedule
from explainer.modules.stage_means import log_mean
from explainer.nets.masknets import build_mask_net, class_head_plan, transfer_class_heads
from explainer.ops import IMAGENET_MEAN, IMAGENET_STD
from explainer.protocols import get_protocol, wrap_for_protocol

MAP_OUTPUTS = ("mask_logits", "values")


def build_fill(fill: str, blur_sigma: float = 5.0) -> Infill:
    """The fill of a learned explainer: an in-filler name or ``learned=<path>``; ``blur`` blurs with
    ``blur_sigma`` pixels of the image itself (reflected at the border), as the Explainer paper does."""
    if fill == "blur":
        return BlurInfill(blur_sigma, reference_size=None, padding_mode="reflect")
    return build_infill(fill)


def sample_present_classes(targets: Tensor, random: bool = True) -> Tensor:
    """``[B]`` one present class per image, uniformly among its present ones (global RNG); ``-1`` for none.

    With ``random=False``, the first present class: what validation uses, so its loss does not depend on the
    random state or on how the images are split between processes.
    """
    present = (targets > 0).float()
    has = present.sum(1) > 0
    if random:
        drawn = torch.multinomial(torch.where(has[:, None], present, torch.ones_like(present)), 1)[:, 0]
    else:
        drawn = present.argmax(1)
    return torch.where(has, drawn, torch.full_like(drawn, -1))


class LearnedExplainerModule(SafeLoading, pl.LightningModule):
    """Base of the learned explainers (see the module docstring).

    Args:
        classifier: the classifier to explain: a ``ClassifierModule`` checkpoint path, a dict of classifier
            options, an ``nn.Module`` or a ``FrozenClassifier`` (:mod:`explainer.classifiers.source`).
        num_classes: number of classes (linked from the data module; must equal the classifier's).
        class_names: class names (linked from the data module).
        mask_net: the explanation network's name in the mask-network registry.
        mask_net_kwargs: its options.
        fill: what removed pixels become: ``mean``, ``zero`` (black), ``blur``, ``local_mean``, ``random`` or
            ``learned=<in-filler export folder>``.
        blur_sigma: sigma in pixels of the ``blur`` fill.
        targets: the classes explained in training: ``labels`` or ``predictions`` (the classifier's own).
        prediction_threshold: probability above which a class counts as predicted.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        scheduler: ``none`` (a constant rate, the papers'), ``onecycle`` or ``cosine`` over the whole run.
        init_from: fine-tune from an export folder or a checkpoint of the same network; class-head rows of
            classes shared by name are kept, the others initialised.
        encoder_from_classifier: start the network's encoder from the classifier's trained features
            (``classifier_unet`` and the networks built on it).
        classifier_hash: the classifier's content hash, recorded at the first run and checked on loading.
        protocol: explain the classifier wrapped for a grid protocol (``gridpg``, ``difull``, ``dipart``).
        grid_size: ``n`` of the grids of ``protocol``.
    """

    kind: ClassVar[str] = ""
    title: ClassVar[str] = "explainer"
    map_output: ClassVar[str] = "mask_logits"

    def __init__(
        self,
        classifier: str | dict[str, Any] | nn.Module,
        num_classes: int = 10,
        class_names: list[str] | None = None,
        mask_net: str = "unet",
        mask_net_kwargs: dict[str, Any] | None = None,
        fill: str = "mean",
        blur_sigma: float = 5.0,
        targets: Literal["labels", "predictions"] = "labels",
        prediction_threshold: float = 0.5,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        scheduler: Schedule = "none",
        init_from: str | None = None,
        encoder_from_classifier: bool = False,
        classifier_hash: str | None = None,
        protocol: str | None = None,
        grid_size: int = 2,
    ) -> None:
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
        self.save_hyperparameters(ignore=["classifier"])
        cells = 1 if protocol is None else get_protocol(protocol).label_cells(grid_size)
        if num_classes % cells:
            raise ValueError(f"num_classes={num_classes} is not a multiple of the {cells} cells of {protocol}")
        base = load_classifier(classifier, num_classes=num_classes // cells)
        self.hparams.classifier = classifier_hparams(classifier, base)
        if protocol is None:
            check_class_names(base, class_names, num_classes)
            self.classifier = base
        else:
            self.classifier = wrap_for_protocol(base, protocol, grid_size)
        reference = self.classifier.reference
        if not any(True for _ in self.classifier.parameters()):
            raise ValueError(f"the classifier '{reference}' has no parameters; it cannot be explained")
        if classifier_hash is not None and classifier_hash != self.classifier.content_hash:
            raise ValueError(
                f"the classifier '{reference}' is not the one this explainer was trained for: its weights hash "
                f"{self.classifier.content_hash[:12]}... differs from the recorded {classifier_hash[:12]}..."
            )
        self.hparams.classifier_hash = self.classifier.content_hash
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.infill = build_fill(fill, blur_sigma).requires_grad_(False).eval()
        self.register_buffer("norm_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("norm_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.infill.set_normalization(IMAGENET_MEAN, IMAGENET_STD)
        self.mask_net = self.build_net()
        if encoder_from_classifier:
            if not hasattr(self.mask_net, "init_encoder_from"):
                raise ValueError(
                    f"mask network '{mask_net}' cannot start from the classifier's features; use 'classifier_unet'"
                )
            self.mask_net.init_encoder_from(getattr(self.classifier.net, "base", self.classifier.net))
        self._checked_classifier = False
        self.fine_tune_plan: dict[str, Any] | None = None
        if init_from:
            self._init_mask_net_from(init_from)

    # -- what a subclass provides -------------------------------------------------------------------------
    def build_net(self) -> nn.Module:
        """The explanation network (subclasses check their options here first)."""
        return build_mask_net(
            self.hparams.mask_net, int(self.hparams.num_classes), **(self.hparams.mask_net_kwargs or {})
        )

    def term_names(self) -> tuple[str, ...]:
        """The loss terms :meth:`explain_batch` returns besides ``loss`` (each logged as ``<stage>/loss_<name>``)."""
        raise NotImplementedError

    def explain_batch(self, batch: Batch) -> dict[str, Tensor]:
        """The loss (``loss``) and its terms on a batch, shared by train / val / test."""
        raise NotImplementedError

    def export_settings(self) -> dict[str, Any]:
        """Settings recorded in an export's ``config.json`` besides the network (e.g. loss weights)."""
        return {}

    # -- shared machinery -----------------------------------------------------------------------------------
    def _init_mask_net_from(self, source: str) -> None:
        state, old_classes, spec = read_mask_net_state(source)
        if spec["name"] != self.hparams.mask_net:
            raise ValueError(
                f"cannot fine-tune a '{self.hparams.mask_net}' mask network from '{source}', which holds a "
                f"'{spec['name']}' network"
            )
        self.mask_net.load_state_dict(transfer_class_heads(self.mask_net, state, old_classes, self.class_names))
        kept, fresh = class_head_plan(old_classes, self.class_names)
        self.fine_tune_plan = {"source": str(source), "kept": kept, "initialised": fresh}
        shown = ", ".join(n if n == o else f"{n} <- {o}" for n, o in kept.items())
        rank_zero_info(
            f"fine-tuning from {source}: class-head rows kept for {len(kept)} class(es) shared by name "
            f"[{shown}]; initialised for {len(fresh)} new class(es) [{', '.join(fresh)}]"
        )

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "mean"):
            self.norm_mean.copy_(torch.tensor(dm.mean).view(1, 3, 1, 1))
            self.norm_std.copy_(torch.tensor(dm.std).view(1, 3, 1, 1))
        mean, std = self.norm_mean.flatten().tolist(), self.norm_std.flatten().tolist()
        self.classifier.set_data_normalization(mean, std)
        self.infill.set_normalization(tuple(mean), tuple(std))
        if dm is not None:  # a learned fill refuses data of another size or normalisation, naming both
            self.infill.check_data(getattr(dm, "image_size", None), mean, std)

    def train(self, mode: bool = True) -> LearnedExplainerModule:
        super().train(mode)
        self.infill.eval()  # a learned fill is frozen, its normalisation statistics too
        return self

    def forward(self, images: Tensor) -> Tensor:
        """The network's raw maps ``[B, C, H, W]`` (mask logits, or values; see ``map_output``)."""
        return self.mask_net(images)

    def maps(self, images: Tensor) -> Tensor:
        """Every class's explanation ``[B, C, H, W]``: masks in [0, 1], or values."""
        out = self(images)
        return torch.sigmoid(out) if self.map_output == "mask_logits" else out

    def fill_for(self, images: Tensor, keep: Tensor | None = None) -> Tensor:
        """What removed pixels become; ``keep`` (``[B, 1, H, W]``, 1 = kept) matters to mask-dependent fills."""
        if keep is None:
            keep = torch.ones_like(images[:, :1])
        return self.infill(images, keep)

    def perturb(self, images: Tensor, mask: Tensor, fill: Tensor | None = None) -> Tensor:
        """``mask * x + (1 - mask) * fill``; a mask-dependent fill is computed for this mask's kept region."""
        if fill is None or self.infill.mask_dependent:
            fill = self.fill_for(images, (mask > 0.5).to(images.dtype))
        return mask * images + (1 - mask) * fill

    def class_probabilities(self, logits: Tensor) -> Tensor:
        """The classifier's class probabilities: sigmoid (multi-label) or softmax (single-label)."""
        return torch.softmax(logits, 1) if self.classifier.activation == "softmax" else torch.sigmoid(logits)

    def check_classifier(self, batch: Batch) -> None:
        """Once, on the first batch: the classifier gives one finite output per class for these images."""
        self.classifier.verify(batch.image, num_classes=int(self.hparams.num_classes))
        self._checked_classifier = True

    def select_targets(self, batch: Batch) -> Tensor:
        """Multi-hot target classes: the labels, or the classifier's predictions on the clean image."""
        if not self._checked_classifier:
            self.check_classifier(batch)
        if self.hparams.targets == "labels":
            return batch.labels
        with torch.no_grad():
            logits = self.classifier(batch.image)
        if self.classifier.activation == "softmax":  # a single-label classifier predicts its top class
            return F.one_hot(logits.argmax(1), logits.shape[1]).to(batch.labels.dtype)
        return (torch.sigmoid(logits) > self.hparams.prediction_threshold).to(batch.labels.dtype)

    def _log_terms(self, out: dict[str, Tensor], stage: str, batch_size: int) -> None:
        log_mean(self, f"{stage}/loss", out["loss"], batch_size, prog_bar=True)
        for name in self.term_names():
            log_mean(self, f"{stage}/loss_{name}", out[name], batch_size)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        out = self.explain_batch(batch)
        if not torch.isfinite(out["loss"]):
            terms = {k: float(out[k].detach()) for k in self.term_names()}
            best = getattr(self.trainer.checkpoint_callback, "best_model_path", "") if self._trainer else ""
            raise FloatingPointError(
                f"non-finite {self.title} loss at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}); terms: {terms}. Training stopped; the last good checkpoint is kept"
                + (f" at {best}" if best else "")
                + ". Lower the learning rate or check the data."
            )
        self._log_terms(out, "train", len(batch))
        return out["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        stop_if_not_finite(self, self.mask_net, f"{self.title} network weights or buffers")

    def on_fit_end(self) -> None:
        self.check_classifier_unchanged()

    def check_classifier_unchanged(self) -> None:
        """The freeze, checked: the classifier's weights and buffers hash as they did before training."""
        now = state_hash(self.classifier.net)
        if now != self.hparams.classifier_hash:
            raise RuntimeError(
                f"the classifier '{self.classifier.reference}' changed during training (weights hash "
                f"{now[:12]}... instead of {self.hparams.classifier_hash[:12]}...): nothing may update "
                "it; the explainer trained against a moving target"
            )

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        out = self.explain_batch(batch)
        self._log_terms(out, "val", len(batch))
        return {k: v.detach() for k, v in out.items()}

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        out = self.explain_batch(batch)
        self._log_terms(out, "test", len(batch))
        return {k: v.detach() for k, v in out.items()}

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self.maps(batch.image)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.mask_net.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return with_schedule(optimizer, self.hparams.get("scheduler", "none"), self, self.hparams.lr)

    # -- checkpoints hold the explanation network only --------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(("classifier.", "infill."))
        }
        # the normalisation the images were trained with (the buffers are not persistent)
        checkpoint["normalization"] = {
            "mean": self.norm_mean.flatten().tolist(),
            "std": self.norm_std.flatten().tolist(),
        }
        checkpoint["explainer_kind"] = {"kind": self.kind, "map_output": self.map_output}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get("hyper_parameters", {})
        if "num_classes" in stored and int(stored["num_classes"]) != int(self.hparams.num_classes):
            raise ValueError(
                f"class-count mismatch: the checkpoint has {stored['num_classes']} classes but this run has "
                f"{self.hparams.num_classes}"
            )
        recorded = stored.get("classifier_hash")
        if recorded and recorded != self.classifier.content_hash:
            raise ValueError(
                "the checkpoint was trained for another classifier (weights hash "
                f"{recorded[:12]}...), not '{self.classifier.reference}' ({self.classifier.content_hash[:12]}...)"
            )
        state = checkpoint["state_dict"]
        for key, value in self.classifier.state_dict().items():
            state.setdefault(f"classifier.{key}", value)
        for key, value in self.infill.state_dict().items():  # a learned fill is loaded from its own export
            state.setdefault(f"infill.{key}", value)


__all__ = ["MAP_OUTPUTS", "LearnedExplainerModule", "build_fill", "sample_present_classes"]
