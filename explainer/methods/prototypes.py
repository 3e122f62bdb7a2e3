"""Part-prototype maps as an attribution method (``"prototypes"``).

A class's map is the sum of its prototypes' activation maps ``x . p~_i`` (which is the class activation
map ``x . v``, since the prototypes sum to the head's weight row), upsampled bilinearly to the input size.
The per-prototype maps, which say *where* each part was seen, come from :meth:`attribute_prototypes`.

    method = build_method("prototypes", classifier=frozen, prototypes="checkpoints/quickstart/prototypes")
    maps = method(images, classes)                      # [B, K, H, W]
    parts = method.attribute_prototypes(images, classes)  # [B, K, k, H, W]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from explainer.export_prototypes import load_prototypes
from explainer.methods.base import AttributionMethod, check_classes, register_method
from explainer.methods.common import eval_mode
from explainer.nets.prototypes import PrototypeLayer, pooled_linear_head


@register_method
class PrototypeAttribution(AttributionMethod):
    """Prototype activation maps of a post-hoc part-prototype head.

    Args:
        classifier: the classifier the head decomposes (a ``FrozenClassifier`` or ``ClassifierNet`` with a
            feature extractor).
        prototypes: a fitted :class:`~explainer.nets.prototypes.PrototypeLayer`, or the folder of an export
            (``model.safetensors`` + ``config.json``).
        check_hash: with an export folder, refuse a classifier whose content hash differs from the one the
            prototypes were fitted to.
    """

    name = "prototypes"
    value_option = "prototypes"
    cost = "one pass"
    needs_grad = False

    def __init__(
        self,
        classifier: nn.Module | None = None,
        prototypes: PrototypeLayer | str | Path | None = None,
        check_hash: bool = True,
    ) -> None:
        super().__init__(classifier)
        if classifier is None or prototypes is None:
            raise ValueError(
                "the 'prototypes' method needs the classifier and a fitted prototype head (or its "
                "export folder): build_method('prototypes', classifier=..., prototypes=...)"
            )
        if not isinstance(prototypes, PrototypeLayer):
            prototypes, config = load_prototypes(prototypes)
            expected = config["classifier"]["content_hash"]
            actual = getattr(classifier, "content_hash", None)
            if check_hash and actual is not None and actual != expected:
                raise ValueError(
                    "the classifier is not the one these prototypes were fitted to (content hash "
                    f"{actual[:12]}... vs {expected[:12]}...); pass the matching classifier or check_hash=False"
                )
        weight, _ = pooled_linear_head(classifier)
        if tuple(weight.shape) != (prototypes.num_classes, prototypes.feature_dim):
            raise ValueError(
                f"the prototype head is for {prototypes.num_classes} classes x {prototypes.feature_dim} features "
                f"but the classifier's head is {tuple(weight.shape)}"
            )
        self.prototypes = prototypes
        net = getattr(classifier, "net", classifier)
        self._features = net.forward_features

    def attribute_prototypes(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        """Per-prototype maps ``[B, K, k, H, W]`` for ``classes`` ``[B, K]`` (``-1`` padding gives zeros)."""
        check_classes(images, classes)
        with eval_mode(self.classifier):  # the classifier's inference behaviour: BatchNorm statistics fixed
            feats = self._features(images)
        maps = self.prototypes.maps(feats, classes.long())  # [B, K, k, h, w]
        batch, kk, k = maps.shape[:3]
        up = F.interpolate(maps.flatten(0, 1), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return up.view(batch, kk, k, *images.shape[-2:])

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        """Class maps ``[B, K, H, W]``: the sum of each class's prototype maps, upsampled bilinearly."""
        return self.attribute_prototypes(images, classes).sum(2)


__all__ = ["PrototypeAttribution"]
