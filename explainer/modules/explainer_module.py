"""ExplainerModule: trains a mask network against a frozen classifier (Stalder et al., 2022)."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from explainer.classifiers.frozen import state_hash
from explainer.classifiers.source import check_class_names, classifier_hparams, load_classifier
from explainer.data.batch import Batch
from explainer.export import read_mask_net_state
from explainer.losses import LossWeights, explainer_loss, target_masks
from explainer.modules.guards import SafeLoading, stop_if_not_finite
from explainer.modules.stage_means import log_mean
from explainer.nets.masknets import build_mask_net, class_head_plan, transfer_class_heads
from explainer.ops import IMAGENET_MEAN, IMAGENET_STD, gaussian_blur
from explainer.protocols import get_protocol, wrap_for_protocol


def sample_present_classes(targets: Tensor) -> Tensor:
    """``[B]`` one present class per image, uniformly among its present ones (global RNG); ``-1`` for none."""
    present = (targets > 0).float()
    has = present.sum(1) > 0
    drawn = torch.multinomial(torch.where(has[:, None], present, torch.ones_like(present)), 1)[:, 0]
    return torch.where(has, drawn, torch.full_like(drawn, -1))


def check_options(
    weights: LossWeights, num_classes: int, mask_net_kwargs: dict[str, Any], protocol: str | None, grid_size: int
) -> None:
    """Errors for options that contradict each other, before anything trains."""
    per_class = weights.class_row_terms()
    if per_class and num_classes < 2:
        raise ValueError(
            f"the per-class loss terms {', '.join(per_class)} compare one class's mask with the others', but this "
            f"mask network outputs a single mask (num_classes={num_classes}); set their weights to 0"
        )
    cells = int(mask_net_kwargs.get("cells", 0) or 0)
    if cells:
        spec = get_protocol(protocol) if protocol is not None else None
        if spec is None or not spec.per_cell:
            raise ValueError(
                f"mask_net_kwargs.cells={cells} gives each per-cell class a cell prior, but "
                f"{'no protocol is set' if spec is None else spec.name + ' has no per-cell classes'}; "
                "use it with a per-cell protocol (difull, dipart) or drop it"
            )
        if cells != grid_size:
            raise ValueError(f"mask_net_kwargs.cells={cells} differs from grid_size={grid_size}; set them equal")


class ExplainerModule(SafeLoading, pl.LightningModule):
    """The Explainer: one forward pass gives a mask per class for a frozen multi-label classifier.

    Loss (REFERENCE section 1): classification of the masked image ``m*x`` + ``entropy`` x inverse-image
    entropy term + ``tv`` x (TV(m) + TV(n)) + ``class_area`` x per-class area bounds + ``target_area`` x
    mean(m) + ``nontarget_area`` x mean(n). The classifier is a :class:`FrozenClassifier`: eval mode,
    no gradients to its weights, never in the optimiser, and not stored in this module's checkpoints
    (they keep its path and content hash; loading checks the hash).

    Args:
        classifier: the classifier to explain (:mod:`explainer.classifiers.source`): a ``ClassifierModule``
            checkpoint path; a dict of classifier options (``source`` = an architecture name, a
            ``package.module:factory``, a TorchScript or ``.pt2`` file; ``weights``; ``output``, ``returns``,
            ``activation``, ``mean``, ``std``, ``input_size``, ``class_names``, ``allow_partial_weights``); or,
            in Python, an ``nn.Module`` or a ``FrozenClassifier``. A single-label (``activation: softmax``)
            classifier is explained with cross-entropy on the target class instead of the paper's BCE.
        num_classes: number of classes (linked from the data module; must equal the classifier's).
        class_names: class names (linked from the data module).
        mask_net: mask-network name (``unet``, ``deeplabv3_resnet50``, ...; see ``build_mask_net``).
        mask_net_kwargs: the mask network's own options (e.g. ``{"width": 16}``).
        entropy: weight of the inverse-image entropy term (lambda_e).
        tv: weight of the total-variation term (lambda_tv).
        class_area: weight of the per-class area bounds (lambda_ac).
        target_area: weight of the mean target-mask area (lambda_m).
        nontarget_area: weight of the mean non-target-mask area (lambda_n).
        min_area: lower area bound of a present class, relative to H*W.
        max_area: upper area bound of a present class, relative to H*W.
        extra_losses: further weighted loss terms by name (``{my_term: 0.5}``), each registered with
            :func:`explainer.losses.register_loss_term`; added after the paper's terms and logged as
            ``<stage>/loss_<name>``.
        fill: what masked-out pixels become: ``mean`` (the dataset mean colour, 0 after normalisation,
            as in the paper), ``zero`` (black) or ``blur`` (a Gaussian blur of the image).
        blur_sigma: sigma in pixels of the ``blur`` fill.
        targets: which classes the target mask covers: ``labels`` (ground truth, as in the paper) or
            ``predictions`` (the classifier's own, for unlabelled images). Metrics record it.
        prediction_threshold: probability above which a class counts as predicted.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        init_from: fine-tune from an exported Explainer folder or an ``ExplainerModule`` checkpoint; class-head
            rows of classes shared by name are kept, the others re-initialised.
        encoder_from_classifier: start the mask network's encoder from the classifier's trained features
            (for ``classifier_unet``, whose encoder has the classifier's architecture); a copy is trained, the
            classifier stays frozen.
        classifier_hash: the classifier's content hash, recorded at the first run and checked on loading.
        protocol: explain the classifier wrapped for a grid protocol (``gridpg``, ``difull``, ``dipart``;
            :mod:`explainer.protocols`), trained on :class:`~explainer.protocols.GridDataModule`
            grids; for DiFull and DiPart the classes are the ``n^2 x C`` per-cell classes.
        grid_size: ``n`` of the grids of ``protocol``.
    """

    def __init__(
        self,
        classifier: str | dict[str, Any] | nn.Module,
        num_classes: int = 10,
        class_names: list[str] | None = None,
        mask_net: str = "unet",
        mask_net_kwargs: dict[str, Any] | None = None,
        entropy: float = 1.0,
        tv: float = 1.0,
        class_area: float = 1.0,
        target_area: float = 0.1,
        nontarget_area: float = 0.3,
        min_area: float = 0.05,
        max_area: float = 0.30,
        extra_losses: dict[str, float] | None = None,
        fill: Literal["mean", "zero", "blur"] = "mean",
        blur_sigma: float = 5.0,
        targets: Literal["labels", "predictions"] = "labels",
        prediction_threshold: float = 0.5,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        init_from: str | None = None,
        encoder_from_classifier: bool = False,
        classifier_hash: str | None = None,
        protocol: str | None = None,
        grid_size: int = 2,
    ) -> None:
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
        if not 0 <= min_area <= max_area <= 1:
            raise ValueError(f"need 0 <= min_area <= max_area <= 1, got {min_area}, {max_area}")
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
                f"the classifier '{reference}' is not the one this Explainer was trained for: its weights hash "
                f"{self.classifier.content_hash[:12]}... differs from the recorded {classifier_hash[:12]}..."
            )
        self.hparams.classifier_hash = self.classifier.content_hash
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.weights = LossWeights(
            entropy, tv, class_area, target_area, nontarget_area, min_area, max_area, extra=dict(extra_losses or {})
        )
        check_options(self.weights, num_classes, mask_net_kwargs or {}, protocol, grid_size)
        self.mask_net = build_mask_net(mask_net, num_classes, **(mask_net_kwargs or {}))
        if encoder_from_classifier:
            if not hasattr(self.mask_net, "init_encoder_from"):
                raise ValueError(
                    f"mask network '{mask_net}' cannot start from the classifier's features; use 'classifier_unet'"
                )
            self.mask_net.init_encoder_from(getattr(self.classifier.net, "base", self.classifier.net))
        self.register_buffer("norm_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("norm_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._checked_classifier = False
        self.fine_tune_plan: dict[str, Any] | None = None
        if init_from:
            self._init_mask_net_from(init_from)

    # -- construction helpers ---------------------------------------------------------------------------
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
        self.classifier.set_data_normalization(self.norm_mean.flatten().tolist(), self.norm_std.flatten().tolist())

    # -- the forward pass ---------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Mask logits ``[B, C, H, W]``; ``sigmoid`` of them are the per-class masks."""
        return self.mask_net(images)

    def fill_for(self, images: Tensor) -> Tensor:
        """The values masked-out pixels take, per ``fill`` (``[B, 3, H, W]`` or a broadcastable tensor)."""
        if self.hparams.fill == "mean":
            return torch.zeros((), device=images.device, dtype=images.dtype)
        if self.hparams.fill == "zero":
            return (-self.norm_mean / self.norm_std).to(images.dtype)
        return gaussian_blur(images, self.hparams.blur_sigma, padding_mode="reflect")

    def select_targets(self, batch: Batch) -> Tensor:
        """Multi-hot target classes: the labels, or the classifier's predictions on the clean image."""
        if self.hparams.targets == "labels":
            return batch.labels
        with torch.no_grad():
            logits = self.classifier(batch.image)
        if self.classifier.activation == "softmax":  # a single-label classifier predicts its top class
            return F.one_hot(logits.argmax(1), logits.shape[1]).to(batch.labels.dtype)
        probs = torch.sigmoid(logits)
        return (probs > self.hparams.prediction_threshold).to(batch.labels.dtype)

    def _check_classifier(self, batch: Batch) -> None:
        self.classifier.verify(batch.image, num_classes=int(self.hparams.num_classes))
        self._checked_classifier = True

    def explain_batch(self, batch: Batch) -> dict[str, Tensor]:
        """Runs masks, both classifier passes and the loss on a batch (shared by train / val / test)."""
        if not self._checked_classifier:
            self._check_classifier(batch)
        images = batch.image
        targets = self.select_targets(batch)
        mask_logits = self(images)
        target_mask, nontarget_mask = target_masks(mask_logits, targets)
        fill = self.fill_for(images)
        masked = target_mask * images + (1 - target_mask) * fill
        inverse = (1 - target_mask) * images + target_mask * fill
        rows = [masked, inverse]
        sampled = None
        if self.weights.needs_class_rows():  # one present class per image, its two images in the same pass
            sampled = sample_present_classes(targets)
            class_mask = torch.sigmoid(
                mask_logits.gather(1, sampled.clamp(min=0).view(-1, 1, 1, 1).expand(-1, 1, *mask_logits.shape[-2:]))
            )
            rows += [class_mask * images + (1 - class_mask) * fill, (1 - class_mask) * images + class_mask * fill]
        logits = self.classifier(torch.cat(rows)).chunk(len(rows))
        terms = explainer_loss(
            mask_logits,
            targets,
            logits[0],
            logits[1],
            target_mask,
            nontarget_mask,
            self.weights,
            activation=self.classifier.activation,
            sampled=sampled,
            kept_logits=logits[2] if sampled is not None else None,
            removed_logits=logits[3] if sampled is not None else None,
        )
        masked_logits, inverse_logits = logits[0], logits[1]
        return {
            **terms,
            "mask_logits": mask_logits,
            "target_mask": target_mask,
            "nontarget_mask": nontarget_mask,
            "masked_logits": masked_logits,
            "inverse_logits": inverse_logits,
            "targets": targets,
        }

    def _log_terms(self, out: dict[str, Tensor], stage: str, batch_size: int) -> None:
        log_mean(self, f"{stage}/loss", out["loss"], batch_size, prog_bar=True)
        for name in ("classification", *self.weights.terms()):
            log_mean(self, f"{stage}/loss_{name}", out[name], batch_size)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        out = self.explain_batch(batch)
        if not torch.isfinite(out["loss"]):
            terms = {k: float(out[k].detach()) for k in ("classification", *self.weights.terms())}
            best = getattr(self.trainer.checkpoint_callback, "best_model_path", "") if self._trainer else ""
            raise FloatingPointError(
                f"non-finite Explainer loss at step {self.global_step} (epoch {self.current_epoch}, batch "
                f"{batch_idx}); terms: {terms}. Training stopped; the last good checkpoint is kept"
                + (f" at {best}" if best else "")
                + ". Lower the learning rate or check the data."
            )
        self._log_terms(out, "train", len(batch))
        return out["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        stop_if_not_finite(self, self.mask_net, "mask-network weights or buffers")

    def on_fit_end(self) -> None:
        self.check_classifier_unchanged()

    def check_classifier_unchanged(self) -> None:
        """The freeze, checked: the classifier's weights and buffers hash as they did before training."""
        now = state_hash(self.classifier.net)
        if now != self.hparams.classifier_hash:
            raise RuntimeError(
                f"the classifier '{self.classifier.reference}' changed during training (weights hash "
                f"{now[:12]}... instead of {self.hparams.classifier_hash[:12]}...): nothing may update "
                "it; the Explainer trained against a moving target"
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
        return torch.sigmoid(self(batch.image))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.mask_net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # -- checkpoints hold the mask network only -------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("classifier.")
        }
        # the normalisation the images were trained with (the buffers are not persistent)
        checkpoint["normalization"] = {
            "mean": self.norm_mean.flatten().tolist(),
            "std": self.norm_std.flatten().tolist(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get("hyper_parameters", {})
        if "num_classes" in stored and int(stored["num_classes"]) != int(self.hparams.num_classes):
            raise ValueError(
                f"class-count mismatch: the Explainer checkpoint has {stored['num_classes']} classes but this "
                f"run has {self.hparams.num_classes}"
            )
        recorded = stored.get("classifier_hash")
        if recorded and recorded != self.classifier.content_hash:
            raise ValueError(
                "the Explainer checkpoint was trained for another classifier (weights hash "
                f"{recorded[:12]}...), not '{self.classifier.reference}' ({self.classifier.content_hash[:12]}...)"
            )
        state = checkpoint["state_dict"]
        for key, value in self.classifier.state_dict().items():
            state.setdefault(f"classifier.{key}", value)
