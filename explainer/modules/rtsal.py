"""Real-time saliency (Dabkowski & Gal, NeurIPS 2017) on the shared learned-explainer loop.

A masking model conditioned on a class selector (:class:`~explainer.nets.selector.SelectorUNetMaskNet`)
gives one mask for the selected class. Each training image selects one class: a present one, or with
probability ``fake_prob`` an absent ("fake") one, whose mask is trained to be empty. The loss
(:func:`~explainer.losses.real_time_saliency_loss`) asks the preserved region ``phi(x, m)`` to keep the class
and the destroyed image ``phi(x, 1 - m)`` to lose it, with a small, smooth mask. Multi-label classifiers use
the class's sigmoid probability, single-label ones its softmax probability.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from explainer.data.batch import Batch
from explainer.losses import SaliencyWeights, real_time_saliency_loss, target_masks
from explainer.modules.learned import LearnedExplainerModule


def sample_selection(targets: Tensor, fake_prob: float) -> tuple[Tensor, Tensor]:
    """One selected class per image and whether it is present: ``(classes [B], real [B] bool)``.

    With probability ``fake_prob`` an absent class (uniformly), else a present one (uniformly); an image with
    no present class selects an absent one, an image with every class present a present one.
    """
    present = targets > 0
    has_present, has_absent = present.any(1), (~present).any(1)
    draw = torch.rand(targets.shape[0], device=targets.device) < fake_prob
    fake = (draw & has_absent) | ~has_present
    pool = torch.where(fake[:, None], ~present, present).float()
    return torch.multinomial(pool, 1)[:, 0], ~fake


class RealTimeSaliencyModule(LearnedExplainerModule):
    """Real-time saliency: a class-selected masking model trained against a frozen classifier.

    Args:
        classifier: the classifier to explain (see :class:`~explainer.modules.learned.LearnedExplainerModule`).
        num_classes: number of classes (linked from the data module).
        class_names: class names (linked from the data module).
        mask_net: a class-conditioned masking model (``selector_unet``).
        mask_net_kwargs: its options (``backbone``, ``width``; the output options ``output``, ``floor``).
        tv: weight of the mask's total variation (lambda_tv).
        area: weight of the area term ``A(m)^area_power`` (lambda_a).
        area_power: the area exponent p.
        preserve: weight of ``-log f_c(phi(x, m))``.
        destroy: weight of ``f_c(phi(x, 1 - m))^destroy_power`` (lambda_d).
        destroy_power: the destroyer exponent q.
        fake_prob: probability that an image selects an absent class (the reference code's 0.3).
        fill: what removed pixels become (an in-filler name or ``learned=<path>``; the paper blurs).
        blur_sigma: sigma in pixels of the ``blur`` fill.
        targets: ``labels`` or ``predictions`` (the classifier's own classes count as present).
        prediction_threshold: probability above which a class counts as predicted.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        init_from: fine-tune from an export or checkpoint of a ``selector_unet``.
        encoder_from_classifier: start the encoder from the classifier's trained features.
        classifier_hash: recorded at the first run, checked on loading.
    """

    kind = "rtsal"
    title = "real-time saliency"
    map_output = "mask_logits"

    def __init__(
        self,
        classifier: str | dict[str, Any] | nn.Module,
        num_classes: int = 10,
        class_names: list[str] | None = None,
        mask_net: str = "selector_unet",
        mask_net_kwargs: dict[str, Any] | None = None,
        tv: float = 0.5,
        area: float = 8.0,
        area_power: float = 0.3,
        preserve: float = 0.3,
        destroy: float = 1.0,
        destroy_power: float = 0.3,
        fake_prob: float = 0.3,
        fill: str = "blur",
        blur_sigma: float = 5.0,
        targets: Literal["labels", "predictions"] = "labels",
        prediction_threshold: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        init_from: str | None = None,
        encoder_from_classifier: bool = False,
        classifier_hash: str | None = None,
    ) -> None:
        if not 0 <= fake_prob < 1:
            raise ValueError(f"fake_prob must be in [0, 1), got {fake_prob}")
        self.weights = SaliencyWeights(tv, area, area_power, preserve, destroy, destroy_power)
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
            init_from=init_from,
            encoder_from_classifier=encoder_from_classifier,
            classifier_hash=classifier_hash,
        )

    def build_net(self) -> nn.Module:
        hp = self.hparams
        if (hp.mask_net_kwargs or {}).get("cells"):
            raise ValueError("mask_net_kwargs.cells (a per-cell prior) applies to the Explainer's per-cell heads only")
        net = super().build_net()
        if not hasattr(net, "selector"):
            raise ValueError(
                f"real-time saliency needs a masking model conditioned on a class selector; '{hp.mask_net}' is not "
                "one: use mask_net: selector_unet"
            )
        return net

    def term_names(self) -> tuple[str, ...]:
        return ("tv", "area", "preserve", "destroy")

    def export_settings(self) -> dict[str, Any]:
        hp = self.hparams
        names = ("tv", "area", "area_power", "preserve", "destroy", "destroy_power", "fake_prob")
        return {"loss_weights": {k: float(getattr(hp, k)) for k in names}}

    def explain_batch(self, batch: Batch) -> dict[str, Tensor]:
        """The loss on one selected class per image; outside training also every class's masks for the metrics."""
        images = batch.image
        targets = self.select_targets(batch)
        selected, real = sample_selection(targets, float(self.hparams.fake_prob))
        masks = torch.sigmoid(self.mask_net(images, selector=selected))
        fill = None if self.infill.mask_dependent else self.fill_for(images)
        rows = [self.perturb(images, masks, fill), self.perturb(images, 1 - masks, fill)]
        probs = self.class_probabilities(self.classifier(torch.cat(rows)))
        preserved, destroyed = probs.gather(1, selected.repeat(2)[:, None])[:, 0].chunk(2)
        out = real_time_saliency_loss(masks, preserved, destroyed, real, self.weights)
        out.update(selected=selected, real=real, selected_mask=masks)
        if not self.training:  # every class's mask, in the Explainer's terms, for ExplainerMetrics and panels
            mask_logits = self(images)
            target_mask, nontarget_mask = target_masks(mask_logits, targets)
            kept = self.perturb(images, target_mask, fill)
            removed = self.perturb(images, 1 - target_mask, fill)
            masked_logits, inverse_logits = self.classifier(torch.cat([kept, removed])).chunk(2)
            out.update(
                mask_logits=mask_logits,
                target_mask=target_mask,
                nontarget_mask=nontarget_mask,
                masked_logits=masked_logits,
                inverse_logits=inverse_logits,
                targets=targets,
            )
        return out


__all__ = ["RealTimeSaliencyModule", "sample_selection"]
