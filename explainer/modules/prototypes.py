"""PrototypeModule: fits post-hoc part-prototype heads for a frozen classifier (Tan, Zhou & Chen, 2024).

The classifier's linear head over globally pooled, non-negative features is decomposed, class by class,
into ``k`` part-prototypes that sum to the class's weight row, so the prototype model's logits equal the
classifier's (see :mod:`explainer.nets.prototype_fit` for the algorithm). Fitting is not gradient
descent: one training epoch (``max_epochs: 1``) collects a bounded, seeded sample of feature locations per
class; when the epoch's batches are all seen (before validation, or at the epoch's end without
validation) the prototypes are fitted, the gallery is drawn, and the head is exported when
``export_dir`` is set. Validation and test check that the logits are unchanged (``*/logit_max_abs_diff``)
and report consistency and stability where the data module gives part keypoints.

    python train.py fit --config configs/quickstart/prototypes.yaml
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.classifiers.source import check_class_names, classifier_hparams, load_classifier
from explainer.data.batch import Batch
from explainer.export_prototypes import CONFIG_FILE, WEIGHTS_FILE, export_prototypes
from explainer.metrics.prototypes import PrototypeConsistency, PrototypeStability, prototype_noise
from explainer.modules.guards import SafeLoading
from explainer.nets.prototype_fit import LocationReservoir, bottom_k_insert, decompose_class
from explainer.nets.prototypes import PrototypeLayer, pooled_linear_head
from explainer.viz import as_rgb, gallery_figure, log_figure, top_patches

_HASH_KEY = "prototype_classifier_hash"


class PrototypeModule(SafeLoading, pl.LightningModule):
    """Fits ``k`` part-prototypes per class for a frozen classifier and evaluates them.

    Args:
        classifier: the classifier (as for :class:`~explainer.modules.ExplainerModule`: a ``ClassifierModule``
            checkpoint, a dict of classifier options naming an architecture or factory and its weights, or
            an ``nn.Module``); it needs a features / head split, and its head must be one linear layer over
            globally average-pooled non-negative features (TorchScript and ``.pt2`` programs have no split).
        num_classes: number of classes (linked from the data module by ``train.py``).
        class_names: class names (linked from the data module).
        prototypes_per_class: ``k``.
        max_locations_per_class: the most feature locations sampled per class for NMF (bounds memory:
            ``C * max_locations_per_class * D`` float64 values on the CPU).
        seed: seed of the location sampling, the NMF initialisation and the evaluation noise.
        evidence_fraction: share of each class's sampled locations, those with the highest class evidence
            ``x . v``, used to discover and refine its prototypes (1.0: every location, as in the original).
        positive_evidence_only: discover parts with NMF on the positively weighted feature dimensions only
            (False: every dimension, as in the original). See :mod:`explainer.nets.prototype_fit`.
        ridge: ``mu`` of the refinement loss (small: mostly shape matching).
        nmf_max_iter: NMF iterations per class.
        nmf_tol: NMF stopping tolerance.
        export_dir: folder for the fitted head (``model.safetensors`` + ``config.json``); None: no export.
        overwrite_export: replace an existing export in ``export_dir`` (otherwise fitting refuses to start).
        gallery_images_per_class: training images per class kept (a seeded sample) to show each prototype's
            top-activating patches; 0 disables the gallery.
        gallery_patches: patches per prototype in the gallery.
        num_parts: part keypoints per object in the data (3 for digit scenes, 15 for CUB).
        box_fraction: side of the hit box relative to the image side (72 px at 224 px).
        consistency_threshold: share of images in which a part must be hit for a consistent prototype.
        noise_std: std of the stability noise (normalised space).
        noise_clip: bound of the stability noise.
    """

    def __init__(
        self,
        classifier: str | dict[str, Any] | nn.Module,
        num_classes: int = 10,
        class_names: list[str] | None = None,
        prototypes_per_class: int = 5,
        max_locations_per_class: int = 16384,
        seed: int = 0,
        evidence_fraction: float = 0.1,
        positive_evidence_only: bool = True,
        ridge: float = 0.1,
        nmf_max_iter: int = 400,
        nmf_tol: float = 1e-4,
        export_dir: str | None = None,
        overwrite_export: bool = False,
        gallery_images_per_class: int = 16,
        gallery_patches: int = 6,
        num_parts: int = 3,
        box_fraction: float = 72 / 224,
        consistency_threshold: float = 0.8,
        noise_std: float = 0.2,
        noise_clip: float = 0.25,
    ) -> None:
        super().__init__()
        if prototypes_per_class < 1:
            raise ValueError(f"prototypes_per_class must be >= 1, got {prototypes_per_class}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
        self.save_hyperparameters(ignore=["classifier"])
        self.automatic_optimization = False
        self.classifier = load_classifier(classifier, num_classes=num_classes)
        self.hparams.classifier = classifier_hparams(classifier, self.classifier)
        check_class_names(self.classifier, class_names, num_classes)
        weight, bias = pooled_linear_head(self.classifier)
        self.layer = PrototypeLayer(num_classes, prototypes_per_class, weight.shape[1], weight, bias)
        self.register_buffer("num_prototypes", torch.full((num_classes,), prototypes_per_class, dtype=torch.long))
        # an empty parameter for a no-op optimiser: its steps count the collected batches as global steps,
        # which Lightning's checkpointing and logging need (they ignore runs without steps)
        self.step_anchor = nn.Parameter(torch.zeros(0))  # never receives a gradient
        metric_args = {
            "num_classes": num_classes,
            "prototypes_per_class": prototypes_per_class,
            "num_parts": num_parts,
            "box_fraction": box_fraction,
        }
        self.val_consistency = PrototypeConsistency(threshold=consistency_threshold, **metric_args)
        self.val_stability = PrototypeStability(**metric_args)
        self.test_consistency = PrototypeConsistency(threshold=consistency_threshold, **metric_args)
        self.test_stability = PrototypeStability(**metric_args)
        self.fit_summary: dict[str, Any] = {}
        self._reservoir: LocationReservoir | None = None
        self._pool: tuple[Tensor, Tensor, torch.Generator] | None = None
        self._batches_seen = 0

    # -- the prototype model -------------------------------------------------------------------------
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``[B, C]``, prototype maps ``[B, C, k, h, w]`` and contributions ``[B, C, k]``."""
        return self.layer(self.classifier.net.forward_features(images))

    # -- collection ------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        out = self.hparams.export_dir
        if stage == "fit" and out and not self.hparams.overwrite_export:
            if (Path(out) / WEIGHTS_FILE).exists() or (Path(out) / CONFIG_FILE).exists():
                raise FileExistsError(
                    f"export_dir '{out}' already holds a prototype export; set model.init_args.export_dir to "
                    "another folder or model.init_args.overwrite_export=true"
                )

    def on_train_epoch_start(self) -> None:
        self.start_collection()

    def start_collection(self) -> None:
        """Empties the location sample (called at the start of each training epoch)."""
        hp = self.hparams
        self._reservoir = LocationReservoir(
            hp.num_classes, self.layer.feature_dim, hp.max_locations_per_class, seed=hp.seed * 7919 + self.global_rank
        )
        self._pool = None
        self._batches_seen = 0
        self._fit_start = time.perf_counter()

    @torch.no_grad()
    def collect(self, images: Tensor, labels: Tensor) -> None:
        """Adds a batch of training images to the location sample (and to the gallery's image sample).

        Args:
            images: ``[B, 3, H, W]`` normalised images.
            labels: ``[B, C]`` multi-hot labels.
        """
        if labels.ndim != 2 or labels.shape[1] != self.hparams.num_classes:
            raise ValueError(
                f"class-count mismatch: the data has labels of shape {tuple(labels.shape)}, the prototype head "
                f"{self.hparams.num_classes} classes"
            )
        if self._reservoir is None:
            self.start_collection()
        self._reservoir.add(self.classifier.net.forward_features(images), labels)
        self._add_to_pool(images, labels)
        self._batches_seen += 1

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        self.collect(batch.image, batch.labels)
        self.optimizers().step()  # a no-op (nothing has a gradient); advances the global step

    def _add_to_pool(self, images: Tensor, labels: Tensor) -> None:
        size = self.hparams.gallery_images_per_class
        if size < 1:
            return
        images = images.detach().to("cpu", torch.float16)
        if self._pool is None:
            gen = torch.Generator().manual_seed(self.hparams.seed * 104729 + 1)
            keys = torch.full((self.hparams.num_classes, size), float("inf"), dtype=torch.float64)
            self._pool = (
                keys,
                torch.zeros(self.hparams.num_classes, size, *images.shape[1:], dtype=torch.float16),
                gen,
            )
        keys, store, gen = self._pool
        if store.shape[2:] != images.shape[1:]:
            return  # images of another size than the first batch: the gallery keeps the first size
        new = torch.rand(self.hparams.num_classes, len(images), generator=gen, dtype=torch.float64)
        bottom_k_insert(keys, store, new.masked_fill(labels.detach().cpu().T <= 0.5, float("inf")), images)

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == "fit":
            self._fit_if_collected()

    def on_train_epoch_end(self) -> None:
        self._fit_if_collected()

    def _fit_if_collected(self) -> None:
        total = self.trainer.num_training_batches
        if self._reservoir is None or self._batches_seen == 0:
            return
        if total != float("inf") and self._batches_seen < total:
            return  # a validation in the middle of the epoch: keep collecting
        self.fit_prototypes()

    # -- fitting ---------------------------------------------------------------------------------------
    def _gathered_reservoir(self) -> LocationReservoir:
        reservoir = self._reservoir
        if self._trainer is not None and self.trainer.world_size > 1:
            # the processes' storage grew with what each was offered: gather at the largest size
            rows = self.all_gather(torch.tensor(reservoir.allocated, device=self.device))
            reservoir.grow(int(rows.max()))
            keys = self.all_gather(reservoir.keys.to(self.device))
            feats = self.all_gather(reservoir.features.to(self.device))
            offered = self.all_gather(reservoir.offered.to(self.device)).sum(0).cpu()
            others = [r for r in range(keys.shape[0]) if r != self.global_rank]
            reservoir.merge(keys[others].cpu(), feats[others].cpu())
            reservoir.offered = offered
        return reservoir

    @property
    def location_sample(self) -> LocationReservoir | None:
        """The collected per-class sample of feature locations (None before collection and after fitting,
        unless fitted with ``keep_sample=True``)."""
        return self._reservoir

    @torch.no_grad()
    def fit_prototypes(self, keep_sample: bool = False) -> dict[str, Any]:
        """Fits the prototypes from the collected locations (called by the training loop).

        Args:
            keep_sample: keep the location sample afterwards (to fit other settings from it); by default it
                is freed.

        Returns:
            A summary: fitting time, locations and prototypes per class, alignment losses.
        """
        hp = self.hparams
        if self._reservoir is None:
            raise RuntimeError("no training images were collected: call collect() (or run a training epoch) first")
        reservoir = self._gathered_reservoir()
        weight, bias = pooled_linear_head(self.classifier)
        protos = torch.zeros(hp.num_classes, hp.prototypes_per_class, weight.shape[1], dtype=torch.float64)
        counts, losses, equal, locations = [], [], [], []
        start = time.perf_counter()
        for c in range(hp.num_classes):  # one NMF per class: inherently sequential and off the hot path
            dec = decompose_class(
                reservoir.class_features(c),
                weight[c],
                hp.prototypes_per_class,
                seed=hp.seed,
                ridge=hp.ridge,
                nmf_max_iter=hp.nmf_max_iter,
                nmf_tol=hp.nmf_tol,
                evidence_fraction=hp.evidence_fraction,
                positive_evidence_only=hp.positive_evidence_only,
            )
            if dec.note:
                name = hp.class_names[c] if hp.class_names else str(c)
                note = "no training image of the class was seen" if int(reservoir.offered[c]) == 0 else dec.note
                warnings.warn(f"class '{name}': {note}; the remaining prototypes are zero", stacklevel=2)
            protos[c] = dec.prototypes
            counts.append(dec.num_prototypes)
            losses.append(dec.alignment_loss)
            equal.append(dec.equal_split_loss)
            locations.append(dec.locations)
        self.layer.set_prototypes(protos.float(), bias)
        self.num_prototypes.copy_(torch.tensor(counts))
        valid = torch.arange(hp.prototypes_per_class)[None, :] < torch.tensor(counts)[:, None]
        for metric in (self.val_consistency, self.val_stability, self.test_consistency, self.test_stability):
            metric.set_valid(valid)
        self.fit_summary = {
            "decomposition_seconds": time.perf_counter() - start,
            "total_seconds": time.perf_counter() - getattr(self, "_fit_start", start),
            "locations_per_class": locations,
            "locations_offered_per_class": reservoir.offered.tolist(),
            "prototypes_per_class": counts,
            "alignment_loss": losses,
            "equal_split_alignment_loss": equal,
            "max_abs_weight_error": float((protos.sum(1) - weight.double()).abs().max()),
        }
        if not keep_sample:
            self._reservoir = None
        for logger in self.loggers if self._trainer is not None else []:
            logger.log_metrics(
                {
                    "fit/seconds": self.fit_summary["total_seconds"],
                    "fit/alignment_loss": sum(losses),
                    "fit/equal_split_alignment_loss": sum(equal),
                },
                step=self.global_step,
            )
        if self._trainer is None or self.trainer.is_global_zero:
            if self._trainer is not None:
                self._draw_gallery()
            if hp.export_dir:
                self.export(hp.export_dir, overwrite=hp.overwrite_export)
        self._pool = None
        return self.fit_summary

    def export(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Writes the fitted head (``model.safetensors`` + ``config.json``) to ``folder``."""
        hp = self.hparams
        keys = (
            "seed",
            "max_locations_per_class",
            "evidence_fraction",
            "positive_evidence_only",
            "ridge",
            "nmf_max_iter",
            "nmf_tol",
        )
        extra = {k: hp[k] for k in keys}
        extra.update({k: v for k, v in self.fit_summary.items() if k != "locations_offered_per_class"})
        return export_prototypes(
            self.layer,
            folder,
            hp.class_names,
            self.classifier,
            num_prototypes=self.num_prototypes,
            extra=extra,
            overwrite=overwrite,
            classifier_spec=hp.classifier,
        )

    def _draw_gallery(self) -> None:
        if self._pool is None:
            return
        keys, store, _ = self._pool
        names = self.hparams.class_names or [str(c) for c in range(self.hparams.num_classes)]
        datamodule = getattr(self.trainer, "datamodule", None)
        for c in range(self.hparams.num_classes):  # one figure per class
            images = store[c][torch.isfinite(keys[c])].to(self.device, torch.float32)
            if len(images) == 0:
                continue
            maps = self.layer.maps(self.classifier.net.forward_features(images))[:, c]
            patches, scores, _ = top_patches(
                as_rgb(images, datamodule), maps, self.hparams.gallery_patches, self.hparams.box_fraction
            )
            fig = gallery_figure(patches, scores, names[c], int(self.num_prototypes[c]))
            log_figure(self.trainer, f"prototypes/gallery_class_{names[c]}", fig)

    # -- evaluation ------------------------------------------------------------------------------------
    def _eval_step(self, batch: Batch, batch_idx: int, stage: str) -> None:
        feats = self.classifier.net.forward_features(batch.image)
        reference = self.classifier.net.forward_head(feats)
        logits, maps, _ = self.layer(feats)
        n = len(batch)
        self.log(
            f"{stage}/logit_max_abs_diff",
            (logits - reference).abs().max(),
            reduce_fx="max",
            batch_size=n,
            sync_dist=True,
        )
        self.log(
            f"{stage}/argmax_agreement",
            (logits.argmax(1) == reference.argmax(1)).float().mean(),
            batch_size=n,
            sync_dist=True,
        )
        self.log(
            f"{stage}/loss",
            F.binary_cross_entropy_with_logits(logits, batch.labels),
            batch_size=n,
            sync_dist=True,
            prog_bar=True,
        )
        if batch.keypoints is None or batch.box_labels is None:
            return
        gen = torch.Generator(device=batch.image.device)
        gen.manual_seed(self.hparams.seed * 1_000_003 + batch_idx * 17 + self.global_rank)
        noisy = prototype_noise(batch.image, self.hparams.noise_std, self.hparams.noise_clip, gen)
        noisy_maps = self.layer.maps(self.classifier.net.forward_features(noisy))
        size = tuple(batch.image.shape[-2:])
        consistency = self.val_consistency if stage == "val" else self.test_consistency
        stability = self.val_stability if stage == "val" else self.test_stability
        consistency.update(maps, batch.keypoints, batch.box_labels, size)
        stability.update(maps, noisy_maps, batch.keypoints, batch.box_labels, size)
        self.log(f"{stage}/consistency", consistency, batch_size=n)
        self.log(f"{stage}/stability", stability, batch_size=n)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return torch.sigmoid(self(batch.image)[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """A no-op optimiser over an empty parameter: the prototypes are fitted in closed form."""
        return torch.optim.SGD([self.step_anchor], lr=0.0)

    # -- checkpoints: the classifier is stored by reference and hash, not copied ------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("classifier.")]:
            del state[key]
        checkpoint[_HASH_KEY] = self.classifier.content_hash

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(_HASH_KEY)
        if stored is not None and stored != self.classifier.content_hash:
            raise ValueError(
                f"the classifier '{self.hparams.classifier}' has changed since these prototypes were fitted "
                f"(content hash {self.classifier.content_hash[:12]}... vs {stored[:12]}...); refit them"
            )
        state = checkpoint["state_dict"]
        for key, value in self.classifier.state_dict().items():
            state.setdefault(f"classifier.{key}", value)


__all__ = ["PrototypeModule"]
