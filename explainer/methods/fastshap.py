"""A trained FastSHAP network as an attribution method: one forward pass gives every class's Shapley values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from explainer.export import load
from explainer.methods.base import check_classes, register_method
from explainer.methods.learned import ExplainerAttribution
from explainer.ops import gather_classes


@register_method
class FastSHAPAttribution(ExplainerAttribution):
    """Shapley values of grid cells from a trained FastSHAP export (``FastSHAPModule``; Jethani et al., 2022).

    The maps are signed values (positive: the cell raises the class probability), constant on each cell; they
    are not masks in [0, 1], so the metrics that multiply an image by a map normalise them first.

    Args:
        classifier: unused (FastSHAP does not query the classifier at inference); accepted for the common
            interface.
        path: the export folder (``checkpoints/quickstart/fastshap``) or a ``.ckpt`` of a ``FastSHAPModule``.
        model: an already loaded FastSHAP network (anything with ``maps(images) -> values``) instead of
            ``path``.

    Examples::

        method = build_method("fastshap", path="checkpoints/quickstart/fastshap")
        values = method.attribute(images, classes)  # [B, K, H, W]
    """

    name = "fastshap"
    needs_classifier = False
    value_option = "path"
    cost = "one pass"
    unit_range = False

    def __init__(
        self, classifier: nn.Module | None = None, path: str | Path | None = None, model: nn.Module | None = None
    ) -> None:
        if (path is None) == (model is None):
            raise ValueError("the 'fastshap' method needs exactly one of path=<export folder or .ckpt> or model=")
        if model is None:
            model = load(path)
            if getattr(model, "map_output", None) != "values":
                raise ValueError(
                    f"'{path}' is a {getattr(model, 'kind', 'explainer')} export whose maps are masks, not values; "
                    f"evaluate it with explainer={path}, or give fastshap= a FastSHAP export"
                )
        super().__init__(classifier, model=model)

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        check_classes(images, classes)
        self.model.to(images.device)
        values = self.model.maps(images) if hasattr(self.model, "maps") else self.model(images)  # values as they are
        if classes.numel() and int(classes.max()) >= values.shape[1]:
            raise ValueError(
                f"the FastSHAP network gives values of {values.shape[1]} classes but class {int(classes.max())} was "
                "asked for; train FastSHAP against the classifier these classes belong to"
            )
        return gather_classes(values, classes)
