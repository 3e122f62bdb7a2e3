"""ExplainerModule: trains a mask network against a frozen classifier (Stalder et al., 2022)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from explainer.data.batch import Batch
from explainer.losses import LossWeights, explainer_loss, target_masks
from explainer.modules.learned import LearnedExplainerModule, sample_present_classes
from explainer.modules.schedules import Schedule
from explainer.protocols import get_protocol


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


class ExplainerModule(LearnedExplainerModule):
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
            as in the paper), ``zero`` (black), ``blur`` (a Gaussian blur of the image), ``local_mean``,
            ``random`` or ``learned=<in-filler export>`` (:mod:`explainer.methods.infill`).
        blur_sigma: sigma in pixels of the ``blur`` fill.
        targets: which classes the target mask covers: ``labels`` (ground truth, as in the paper) or
            ``predictions`` (the classifier's own, for unlabelled images). Metrics record it.
        prediction_threshold: probability above which a class counts as predicted.
        lr: Adam learning rate (the peak rate with ``scheduler="onecycle"``).
        weight_decay: Adam weight decay.
        scheduler: ``none`` (the paper's constant rate), ``onecycle`` or ``cosine`` over the whole run.
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

    kind = "explainer"
    title = "Explainer"
    map_output = "mask_logits"

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
        if not 0 <= min_area <= max_area <= 1:
            raise ValueError(f"need 0 <= min_area <= max_area <= 1, got {min_area}, {max_area}")
        self.weights = LossWeights(
            entropy, tv, class_area, target_area, nontarget_area, min_area, max_area, extra=dict(extra_losses or {})
        )
        super().__init__(
            classifier,
            num_classes=num_classes,
            class_names=class_names,
            mask_net=mask_net,
            mask_net_kwargs=mask_net_kwargs,
            fill=fill,
            blur_sigma=blur_sigma,
            targets=targets,
            prediction_threshold=prediction_threshold,
            lr=lr,
            weight_decay=weight_decay,
            scheduler=scheduler,
            init_from=init_from,
            encoder_from_classifier=encoder_from_classifier,
            classifier_hash=classifier_hash,
            protocol=protocol,
            grid_size=grid_size,
        )

    def build_net(self) -> nn.Module:
        hp = self.hparams
        check_options(self.weights, int(hp.num_classes), hp.mask_net_kwargs or {}, hp.protocol, hp.grid_size)
        return super().build_net()

    def term_names(self) -> tuple[str, ...]:
        return ("classification", *self.weights.terms())

    def export_settings(self) -> dict[str, Any]:
        hp = self.hparams
        names = ("entropy", "tv", "class_area", "target_area", "nontarget_area", "min_area", "max_area")
        return {"loss_weights": {k: float(getattr(hp, k)) for k in names}}

    def explain_batch(self, batch: Batch) -> dict[str, Tensor]:
        """Runs masks, both classifier passes and the loss on a batch (shared by train / val / test)."""
        images = batch.image
        targets = self.select_targets(batch)
        mask_logits = self(images)
        target_mask, nontarget_mask = target_masks(mask_logits, targets)
        fill = None if self.infill.mask_dependent else self.fill_for(images)
        rows = [self.perturb(images, target_mask, fill), self.perturb(images, 1 - target_mask, fill)]
        sampled = None
        if self.weights.needs_class_rows():  # one present class per image, its two images in the same pass
            sampled = sample_present_classes(targets, random=self.training)
            class_mask = torch.sigmoid(
                mask_logits.gather(1, sampled.clamp(min=0).view(-1, 1, 1, 1).expand(-1, 1, *mask_logits.shape[-2:]))
            )
            rows += [self.perturb(images, class_mask, fill), self.perturb(images, 1 - class_mask, fill)]
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
        return {
            **terms,
            "mask_logits": mask_logits,
            "target_mask": target_mask,
            "nontarget_mask": nontarget_mask,
            "masked_logits": logits[0],
            "inverse_logits": logits[1],
            "targets": targets,
        }
