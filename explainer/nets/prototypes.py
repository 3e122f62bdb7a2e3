"""The part-prototype layer of a post-hoc prototype head, and the check that a classifier admits one.

A classifier whose head is linear over globally average-pooled, non-negative features,
``logit_c(x) = mean_hw(x) . v_c + b_c``, is rewritten exactly as a sum of part-prototype contributions:
``logit_c(x) = sum_i mean_hw(x . p_ci) + b_c`` whenever ``sum_i p_ci = v_c`` (by linearity of the mean and
the dot product). :class:`PrototypeLayer` holds the ``p_ci`` and computes the per-prototype activation maps
``x . p_ci`` (dot products, not cosines), their contributions (the maps' means) and the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from explainer.classifiers.factory import ClassifierNet


class PrototypeLayer(nn.Module):
    """``k`` part-prototypes per class over ``D``-dimensional features, plus the class biases.

    The prototypes and bias are buffers (they are fitted in closed form, never by gradient descent).
    A freshly built layer holds the trivial exact decomposition when given the head's weights:
    every prototype equal to ``v_c / k``.

    Args:
        num_classes: ``C``.
        prototypes_per_class: ``k``.
        feature_dim: ``D``.
        weight: optional ``[C, D]`` head weight; initialises each prototype to ``weight / k``.
        bias: optional ``[C]`` head bias (zeros if absent).
    """

    def __init__(
        self,
        num_classes: int,
        prototypes_per_class: int,
        feature_dim: int,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or prototypes_per_class < 1 or feature_dim < 1:
            raise ValueError(
                "num_classes, prototypes_per_class and feature_dim must all be >= 1, got "
                f"{num_classes}, {prototypes_per_class}, {feature_dim}"
            )
        protos = torch.zeros(num_classes, prototypes_per_class, feature_dim)
        if weight is not None:
            if tuple(weight.shape) != (num_classes, feature_dim):
                raise ValueError(f"weight must be [{num_classes}, {feature_dim}], got {tuple(weight.shape)}")
            protos[:] = weight.detach().float().unsqueeze(1) / prototypes_per_class
        self.register_buffer("prototypes", protos)
        self.register_buffer("bias", torch.zeros(num_classes) if bias is None else bias.detach().float().clone())
        if tuple(self.bias.shape) != (num_classes,):
            raise ValueError(f"bias must be [{num_classes}], got {tuple(self.bias.shape)}")

    @property
    def num_classes(self) -> int:
        """``C``."""
        return self.prototypes.shape[0]

    @property
    def prototypes_per_class(self) -> int:
        """``k``."""
        return self.prototypes.shape[1]

    @property
    def feature_dim(self) -> int:
        """``D``."""
        return self.prototypes.shape[2]

    def set_prototypes(self, prototypes: Tensor, bias: Tensor | None = None) -> None:
        """Replaces the prototypes ``[C, k, D]`` (and optionally the bias ``[C]``) in place."""
        if prototypes.shape != self.prototypes.shape:
            raise ValueError(f"prototypes must be {tuple(self.prototypes.shape)}, got {tuple(prototypes.shape)}")
        self.prototypes.copy_(prototypes.to(self.prototypes))
        if bias is not None:
            self.bias.copy_(bias.to(self.bias))

    def maps(self, features: Tensor, classes: Tensor | None = None) -> Tensor:
        """Per-prototype activation maps ``x . p`` at the feature resolution.

        Args:
            features: ``[B, D, h, w]`` feature maps.
            classes: optional ``[B, K]`` class indices (``-1`` for padding, whose maps are zero).

        Returns:
            ``[B, C, k, h, w]`` for all classes, or ``[B, K, k, h, w]`` for ``classes``.
        """
        self._check_features(features)
        protos = self.prototypes.to(features.dtype)
        if classes is None:
            return torch.einsum("bdhw,ckd->bckhw", features, protos)
        picked = protos[classes.clamp(min=0)] * (classes >= 0).to(protos.dtype)[..., None, None]
        return torch.einsum("bdhw,bnkd->bnkhw", features, picked)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits, activation maps and contributions of every prototype.

        Args:
            features: ``[B, D, h, w]`` (non-negative) feature maps of the backbone.

        Returns:
            ``(logits [B, C], maps [B, C, k, h, w], contributions [B, C, k])`` with
            ``contributions = maps.mean((-2, -1))`` and ``logits = contributions.sum(-1) + bias``.
        """
        maps = self.maps(features)
        contributions = maps.mean(dim=(-2, -1))
        logits = contributions.sum(-1) + self.bias.to(features.dtype)
        return logits, maps, contributions

    def _check_features(self, features: Tensor) -> None:
        if features.ndim != 4 or features.shape[1] != self.feature_dim:
            raise ValueError(f"expected feature maps [B, {self.feature_dim}, h, w], got shape {tuple(features.shape)}")


_PASS_THROUGH = (nn.Dropout, nn.Identity, nn.Flatten)


def pooled_linear_head(net: nn.Module) -> tuple[Tensor, Tensor]:
    """The weight and bias of a classifier whose head is one linear layer over globally pooled features.

    Accepted: a :class:`~explainer.classifiers.ClassifierNet` (or a ``FrozenClassifier`` around one)
    with a feature extractor, global average pooling to ``1x1`` (``AdaptiveAvgPool2d(1)``), flattening,
    and a head that is a single ``nn.Linear``, possibly inside an ``nn.Sequential`` with dropout /
    identity / flatten layers (identities in eval mode). This covers ``digitnet``, the ResNet family and
    DenseNet; VGG's ``25088-4096-4096-C`` head over ``7x7`` pooled maps is refused.

    Args:
        net: the classifier.

    Returns:
        ``(weight [C, D], bias [C])``, detached copies (zero bias when the layer has none).

    Raises:
        ValueError: the classifier is not of that form (the message says which part is not).
    """
    inner = getattr(net, "net", net)
    name = getattr(inner, "name", type(inner).__name__)
    fix = (
        "post-hoc prototype heads need a classifier whose logits are one linear layer over globally "
        "average-pooled features; use e.g. digitnet or a ResNet, or give your model a head of the form "
        "AdaptiveAvgPool2d(1) -> Flatten -> Linear"
    )
    if not isinstance(inner, ClassifierNet) or inner.features is None:
        raise ValueError(f"classifier '{name}' has no separate feature extractor: {fix}")
    pool = inner.pool
    size = getattr(pool, "output_size", None)
    if not isinstance(pool, nn.AdaptiveAvgPool2d) or size not in (1, (1, 1), [1, 1]) or not inner.flatten:
        raise ValueError(
            f"classifier '{name}' does not pool its features globally before the head (pool: {pool!r}); "
            f"its head is not linear over globally pooled features: {fix}"
        )
    layers = list(inner.head) if isinstance(inner.head, nn.Sequential) else [inner.head]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    others = [m for m in layers if not isinstance(m, (nn.Linear, *_PASS_THROUGH))]
    if len(linears) != 1 or others:
        kinds = ", ".join(type(m).__name__ for m in layers)
        raise ValueError(f"classifier '{name}' has a head of several or non-linear layers ({kinds}): {fix}")
    linear = linears[0]
    weight = linear.weight.detach().clone()
    bias = linear.bias.detach().clone() if linear.bias is not None else torch.zeros(linear.out_features)
    return weight, bias


__all__ = ["PrototypeLayer", "pooled_linear_head"]
