"""The one interface of every attribution method.

``attribute(images[B, 3, H, W], classes[B, K]) -> maps[B, K, H, W]``: ``images`` are normalised as the
classifier expects, ``classes`` holds K class indices per image (``-1`` marks padding, whose map is zero),
and map ``[b, k]`` explains class ``classes[b, k]`` of image ``b`` at the input resolution. Higher means
more important. Methods register themselves by name so ``evaluate.py`` can cross any method with any metric.

What a method can do is declared on its class (:class:`AttributionMethod`): its name, whether it queries the
classifier, the layer forms it supports, the option its ``name=value`` form sets, whether its maps are
masks in [0, 1], and a rough cost class. The evaluation plan, the demo and the tests read these.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from explainer.registry import Registry

METHODS: Registry[type[AttributionMethod]] = Registry("attribution method", plural="methods")

COSTS = ("free", "one pass", "gradients", "perturbation", "optimisation")
"""Cost classes, cheapest first: no model query (``free``); one forward pass of the method's own network
(``one pass``); a few forward and backward passes of the classifier (``gradients``); many forward passes
(``perturbation``); an optimisation per image (``optimisation``)."""

LAYER_FORMS = ("input", "middle", "final")
"""Where a method may attribute (ML-Att, Rao et al. 2022): the input, or the activations of a middle or the
final feature layer, treated as the input."""


class AttributionMethod(nn.Module):
    """Base class of attribution methods.

    Subclasses implement :meth:`attribute` and declare what they can do:

    * ``name``: the registry key (:func:`register_method` reads it);
    * ``needs_classifier``: the method queries the classifier (``False`` for the trivial references and a
      learned explainer, which uses its own network);
    * ``layer_forms``: the forms of :data:`LAYER_FORMS` it supports (empty: the input only, and it cannot be
      moved to a layer);
    * ``value_option``: the option that ``name=value`` on the command line sets (``explainer=<path>``);
    * ``unit_range``: the maps are masks in [0, 1] (every other method's maps are brought there by "max"
      normalisation before a metric multiplies an image by them);
    * ``cost``: a class of :data:`COSTS`;
    * ``wraps_method``: it wraps another registered method (``smooth``);
    * ``needs_grad``: gradients must be enabled around the call.

    Args:
        classifier: the model explained (usually a :class:`~explainer.classifiers.FrozenClassifier`);
            ``None`` for methods that do not query it (trivial references, a learned explainer).
    """

    name: ClassVar[str] = ""
    needs_classifier: ClassVar[bool] = True
    layer_forms: ClassVar[tuple[str, ...]] = ()
    value_option: ClassVar[str | None] = None
    unit_range: ClassVar[bool] = False
    cost: ClassVar[str] = "gradients"
    wraps_method: ClassVar[bool] = False
    needs_grad: bool = False

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


def register_method(cls: type[AttributionMethod]) -> type[AttributionMethod]:
    """Class decorator: makes a method available to :func:`build_method` under its ``name``, after checking
    its declarations."""
    if cls.cost not in COSTS:
        raise ValueError(f"method '{cls.name}' declares cost {cls.cost!r}; expected one of {', '.join(COSTS)}")
    unknown = set(cls.layer_forms) - set(LAYER_FORMS)
    if unknown:
        raise ValueError(
            f"method '{cls.name}' declares unknown layer forms {sorted(unknown)}; "
            f"expected some of {', '.join(LAYER_FORMS)}"
        )
    return METHODS.add(cls.name, cls)


def available_methods() -> list[str]:
    """The registered method names."""
    return METHODS.names()


def method_class(name: str) -> type[AttributionMethod]:
    """The class registered under ``name``, whose attributes say what the method can do."""
    return METHODS.get(name)


def build_method(name: str, classifier: nn.Module | None = None, **options: Any) -> AttributionMethod:
    """Builds a registered attribution method.

    Args:
        name: the registry name (see :func:`available_methods`).
        classifier: the model to explain.
        **options: the method's own settings.

    Returns:
        The method.
    """
    return METHODS.get(name)(classifier=classifier, **options)
