"""The one interface of every attribution method.

``attribute(images[B, 3, H, W], classes[B, K]) -> maps[B, K, H, W]``: ``images`` are normalised as the
classifier expects, ``classes`` holds K class indices per image (``-1`` marks padding, whose map is zero),
and map ``[b, k]`` explains class ``classes[b, k]`` of image ``b`` at the input resolution. Higher means
more important. Methods register themselves by name so ``evaluate.py`` can cross any method with any metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

_REGISTRY: dict[str, Callable[..., AttributionMethod]] = {}


class AttributionMethod(nn.Module):
    """Base class of attribution methods.

    Subclasses implement :meth:`attribute`. ``name`` is the registry key; ``needs_grad`` tells callers
    whether gradients must be enabled around the call; ``unit_range`` says the maps are masks in [0, 1]
    (every other method's maps are brought there by "max" normalisation before a metric multiplies an
    image by them).

    Args:
        classifier: the model explained (usually a :class:`~explainer.classifiers.FrozenClassifier`);
            ``None`` for methods that do not query it (trivial references, a learned explainer).
    """

    name: str = ""
    needs_grad: bool = False
    unit_range: bool = False  # maps are already masks in [0, 1] (metrics use them as they are)

    def __init__(self, classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.classifier = classifier

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        """Maps ``[B, K, H, W]`` for ``classes`` ``[B, K]`` (see the module docstring)."""
        raise NotImplementedError

    def forward(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        with torch.set_grad_enabled(self.needs_grad or torch.is_grad_enabled()):
            return self.attribute(images, classes, **kwargs)


def check_classes(images: Tensor, classes: Tensor) -> None:
    """Validates the ``classes`` argument of :meth:`AttributionMethod.attribute`."""
    if classes.ndim != 2 or classes.shape[0] != images.shape[0]:
        raise ValueError(
            f"classes must be [B, K] class indices for B={images.shape[0]} images, got shape {tuple(classes.shape)}"
        )
    if classes.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"classes must be an integer tensor, got {classes.dtype}")


def register_method(name: str) -> Callable[[Callable[..., AttributionMethod]], Callable[..., AttributionMethod]]:
    """Class decorator: makes a method available to :func:`build_method` under ``name``."""

    def decorate(factory: Callable[..., AttributionMethod]) -> Callable[..., AttributionMethod]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"attribution method '{name}' is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_methods() -> list[str]:
    """The registered method names."""
    return sorted(_REGISTRY)


def build_method(name: str, classifier: nn.Module | None = None, **options: Any) -> AttributionMethod:
    """Builds a registered attribution method.

    Args:
        name: the registry name (see :func:`available_methods`).
        classifier: the model to explain.
        **options: the method's own settings.

    Returns:
        The method.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown attribution method '{name}'; valid methods: {', '.join(available_methods())}")
    return _REGISTRY[name](classifier=classifier, **options)


def gather_classes(per_class: Tensor, classes: Tensor) -> Tensor:
    """Selects maps ``[B, K, H, W]`` for ``classes`` ``[B, K]`` from maps of every class ``[B, C, H, W]``.

    Padding entries (``-1``) give all-zero maps.
    """
    index = classes.clamp(min=0).view(*classes.shape, 1, 1).expand(-1, -1, *per_class.shape[-2:])
    maps = per_class.gather(1, index)
    return maps * (classes >= 0).view(*classes.shape, 1, 1).to(maps.dtype)


def present_classes(labels: Tensor) -> Tensor:
    """The present classes of multi-hot ``labels`` ``[B, C]`` as ``[B, K]`` indices padded with ``-1``.

    ``K`` is the largest number of present classes in the batch (at least 1).
    """
    present = labels > 0.5
    k = max(1, int(present.sum(1).max().item())) if labels.numel() else 1
    # stable order: present classes first, by index
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :k]
    taken = present.gather(1, order)
    return torch.where(taken, order, torch.full_like(order, -1))
