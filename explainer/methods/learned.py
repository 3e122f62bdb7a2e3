"""The trained Explainer as an attribution method: one forward pass gives every class's mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from explainer.export import load
from explainer.methods.base import AttributionMethod, check_classes, register_method
from explainer.ops import gather_classes


@register_method
class ExplainerAttribution(AttributionMethod):
    """Masks of a trained Explainer, from an export folder or an ``ExplainerModule`` checkpoint.

    Args:
        classifier: unused (the Explainer does not query the classifier at inference); accepted for the
            common interface.
        path: the export folder (``checkpoints/<name>``) or a ``.ckpt`` of an ``ExplainerModule``.
        model: an already loaded explainer (anything with ``forward(images) -> mask logits``) instead of
            ``path``.
    """

    name = "explainer"
    needs_classifier = False
    value_option = "path"
    cost = "one pass"
    unit_range = True

    def __init__(
        self, classifier: nn.Module | None = None, path: str | Path | None = None, model: nn.Module | None = None
    ) -> None:
        super().__init__(classifier)
        if (path is None) == (model is None):
            raise ValueError(f"the '{self.name}' method needs exactly one of path=<export folder or .ckpt> or model=")
        if model is None:
            model = load(path)
        self.model = model.eval()

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        check_classes(images, classes)
        self.model.to(images.device)
        masks = self.model.maps(images) if hasattr(self.model, "maps") else self.model(images).sigmoid()
        if classes.numel() and int(classes.max()) >= masks.shape[1]:
            raise ValueError(
                f"the Explainer predicts {masks.shape[1]} class masks but class {int(classes.max())} was asked "
                "for; under --protocol difull/dipart the classes are per cell: train an Explainer against the "
                "wrapped classifier (configs/quickstart/explainer_difull.yaml)"
            )
        return gather_classes(masks, classes)


@register_method
class RealTimeSaliencyAttribution(ExplainerAttribution):
    """Masks of a trained real-time saliency model (Dabkowski & Gal, 2017;
    :class:`~explainer.modules.rtsal.RealTimeSaliencyModule`), from its export folder or checkpoint: the encoder
    runs once per image, the class-selected decoder once per class."""

    name = "rtsal"
