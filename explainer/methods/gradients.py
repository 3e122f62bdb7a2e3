"""Gradient attribution methods through captum: gradient, input x gradient, integrated gradients, guided backprop.

Every (image, class) pair of a call becomes one row of a batch with its own target class, so captum runs
one backward pass per chunk of ``batch_size`` pairs (integrated gradients: ``steps`` rows per pair, in
internal batches). The score is the class logit. The per-channel attributions ``[3, H, W]`` are reduced to
one map by summing over the channels:

* ``gradient``: the sum of absolute gradients ``sum_ch |d y_c / d x_ch|`` (captum ``Saliency(abs=True)``),
  non-negative;
* ``input_x_gradient``, ``integrated_gradients``, ``guided_backprop``: the *signed* channel sum, so
  positive values are evidence for the class and negative values against it (the energy pointing game and
  GridPG count only the positive part). ``absolute=True`` sums absolute values instead.

captum is an optional dependency (``pip install explainer[eval]``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from explainer.methods.base import AttributionMethod, check_classes, register_method
from explainer.methods.common import chunk_slices, eval_mode, scatter_pairs, valid_pairs


def _captum_attr() -> Any:
    try:
        import captum.attr
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the gradient attribution methods need captum: pip install 'explainer[eval]' (or captum==0.9.0)"
        ) from err
    return captum.attr


class _CaptumMethod(AttributionMethod):
    needs_grad = True
    default_absolute = False

    def __init__(self, classifier: nn.Module | None = None, batch_size: int = 64, absolute: bool | None = None) -> None:
        super().__init__(classifier)
        if classifier is None:
            raise ValueError(f"{type(self).__name__} needs the classifier to explain")
        self.batch_size = int(batch_size)
        self.absolute = self.default_absolute if absolute is None else bool(absolute)

    def captum_attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Per-channel attributions ``[N, 3, H, W]`` from captum."""
        raise NotImplementedError

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        """Maps ``[B, K, H, W]`` of ``classes`` ``[B, K]`` (``-1`` gives a zero map), summed over channels."""
        check_classes(images, classes)
        b_idx, k_idx, c_idx = valid_pairs(classes)
        maps = []
        with torch.enable_grad(), eval_mode(self.classifier):
            for part in chunk_slices(len(b_idx), self.batch_size):
                inputs = images[b_idx[part]].detach().clone().requires_grad_(True)
                attr = self.captum_attribute(inputs, c_idx[part]).detach()
                maps.append((attr.abs() if self.absolute else attr).sum(1))
        values = torch.cat(maps) if maps else images.new_zeros(0, *images.shape[-2:])
        return scatter_pairs(values.to(images.dtype), b_idx, k_idx, tuple(classes.shape))


@register_method("gradient")
class Gradient(_CaptumMethod):
    """Gradient saliency (Simonyan et al., 2014): ``sum_ch |d y_c / d x|`` (captum ``Saliency``).

    Args:
        classifier: the model explained (logits).
        batch_size: (image, class) pairs per backward pass.
        absolute: sum absolute values over channels (default True; False sums signed gradients).
    """

    name = "gradient"
    default_absolute = True

    def captum_attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return _captum_attr().Saliency(self.classifier).attribute(inputs, target=targets, abs=False)


@register_method("input_x_gradient")
class InputXGradient(_CaptumMethod):
    """Input x gradient, signed channel sum (captum ``InputXGradient``).

    Args:
        classifier: the model explained (logits).
        batch_size: (image, class) pairs per backward pass.
        absolute: sum absolute values over channels instead of signed ones (default False).
    """

    name = "input_x_gradient"

    def captum_attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return _captum_attr().InputXGradient(self.classifier).attribute(inputs, target=targets)


@register_method("integrated_gradients")
class IntegratedGradients(_CaptumMethod):
    """Integrated gradients (Sundararajan et al., 2017) from a zero baseline (the mean colour), signed sum.

    Args:
        classifier: the model explained (logits).
        steps: points of the path integral (captum's Gauss-Legendre rule).
        batch_size: (image, class) pairs per call; the ``pairs * steps`` scaled inputs go through the
            classifier in internal batches of ``batch_size`` rows.
        absolute: sum absolute values over channels instead of signed ones (default False).
    """

    name = "integrated_gradients"

    def __init__(self, classifier: nn.Module | None = None, steps: int = 50, batch_size: int = 64,
                 absolute: bool | None = None) -> None:
        super().__init__(classifier, batch_size, absolute)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)

    def captum_attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        ig = _captum_attr().IntegratedGradients(self.classifier)
        return ig.attribute(inputs, baselines=0.0, target=targets, n_steps=self.steps,
                            internal_batch_size=max(self.batch_size, 1))


@register_method("guided_backprop")
class GuidedBackprop(_CaptumMethod):
    """Guided backpropagation (Springenberg et al., 2015), signed channel sum (captum ``GuidedBackprop``).

    Only ``nn.ReLU`` modules are modified; a ReLU applied as a function is not.

    Args:
        classifier: the model explained (logits).
        batch_size: (image, class) pairs per backward pass.
        absolute: sum absolute values over channels instead of signed ones (default False).
    """

    name = "guided_backprop"

    def captum_attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        with warnings.catch_warnings():  # captum announces its temporary ReLU hooks on every call
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            return _captum_attr().GuidedBackprop(self.classifier).attribute(inputs, target=targets)
