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

**Layer attribution (ML-Att, Rao et al., CVPR 2022).** With ``layer`` set (a dotted module name, or
``input`` / ``middle`` / ``final``, see :func:`~explainer.methods.cam.layer_by_role`), the layer's
activations ``A`` take the place of the input: ``gradient`` sums ``|dy/dA|``, ``input_x_gradient`` sums
``A * dy/dA`` and ``integrated_gradients`` sums ``A * mean_t dy/dA(t A)`` (path from zero activations,
``steps`` midpoints) over the channels; the maps are upsampled bilinearly to the input size. Guided
backprop has no layer form.

captum is an optional dependency (``pip install explainer[eval]``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.methods.base import AttributionMethod, check_classes, register_method
from explainer.methods.common import (
    chunk_slices,
    eval_mode,
    layer_by_role,
    resolve_layer,
    scatter_pairs,
    valid_pairs,
)


def _captum_attr() -> Any:
    try:
        import captum.attr
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the gradient attribution methods need captum: pip install 'explainer[eval]' (or captum==0.9.0)"
        ) from err
    return captum.attr


def layer_attribution(
    classifier: nn.Module,
    layer: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    times_activation: bool = False,
    path_steps: int = 0,
) -> Tensor:
    """Per-channel attributions ``[N, D, h, w]`` at ``layer``'s output (see the module docstring).

    Args:
        classifier: the model (logits).
        layer: a module of ``classifier`` whose output is a ``[N, D, h, w]`` tensor.
        inputs: ``[N, 3, H, W]`` images.
        targets: ``[N]`` class index per image.
        times_activation: multiply the gradients by the activations (input x gradient, integrated gradients).
        path_steps: points of the path integral from zero activations (integrated gradients, midpoint rule);
            0 for plain gradients at the activations.
    """
    store: dict[str, Tensor] = {}
    reps = max(int(path_steps), 1)
    alphas = (torch.arange(reps, device=inputs.device, dtype=inputs.dtype) + 0.5) / reps if path_steps else None

    def hook(module: nn.Module, args: object, output: object) -> Tensor:
        if not isinstance(output, Tensor) or output.ndim != 4:
            raise ValueError(
                f"layer attribution needs a layer with a [N, D, h, w] output, got "
                f"{type(output).__name__}{tuple(output.shape) if isinstance(output, Tensor) else ''}"
            )
        acts = output.detach()
        if alphas is not None:
            acts = acts.reshape(reps, -1, *acts.shape[1:])
            store["a"] = acts[0]
            scaled = (alphas.view(-1, 1, 1, 1, 1) * acts).reshape(-1, *acts.shape[2:])
        else:
            store["a"] = acts
            scaled = acts
        store["z"] = scaled.requires_grad_(True)
        return store["z"]

    handle = layer.register_forward_hook(hook)
    try:
        batch = inputs.repeat(reps, 1, 1, 1) if reps > 1 else inputs
        logits = classifier(batch)
    finally:
        handle.remove()
    if "z" not in store:
        raise ValueError("the attributed layer was not used by the classifier's forward pass")
    score = logits.gather(1, targets.repeat(reps).view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(score, store["z"])
    grads = grads.reshape(reps, -1, *grads.shape[1:]).mean(0)
    return grads * store["a"] if times_activation else grads


class _CaptumMethod(AttributionMethod):
    needs_grad = True
    default_absolute = False
    layer_times_activation = False  # the layer form multiplies the gradients by the activations

    def __init__(
        self,
        classifier: nn.Module | None = None,
        batch_size: int = 64,
        absolute: bool | None = None,
        layer: str | None = None,
    ) -> None:
        super().__init__(classifier)
        if classifier is None:
            raise ValueError(f"{type(self).__name__} needs the classifier to explain")
        self.batch_size = int(batch_size)
        self.absolute = self.default_absolute if absolute is None else bool(absolute)
        self.layer = layer_by_role(classifier, layer) if layer is not None else None
        if self.layer is not None:
            if not {"middle", "final"} & set(self.layer_forms):
                raise ValueError(f"{type(self).__name__} has no layer form; run it at the input (no layer)")
            resolve_layer(classifier, self.layer)  # fails early, listing the valid names

    def layer_path_steps(self) -> int:
        """Points of the layer form's path integral; 0: none."""
        return 0

    def per_channel(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Per-channel attributions at the input (captum) or at ``layer``, upsampled to the input size."""
        if self.layer is None:
            return self.captum_attribute(inputs, targets)
        return layer_attribution(
            self.classifier,
            resolve_layer(self.classifier, self.layer),
            inputs,
            targets,
            self.layer_times_activation,
            self.layer_path_steps(),
        )

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
                attr = self.per_channel(inputs, c_idx[part]).detach()
                summed = (attr.abs() if self.absolute else attr).sum(1)
                if summed.shape[-2:] != images.shape[-2:]:
                    summed = F.interpolate(
                        summed[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False
                    )[:, 0]
                maps.append(summed)
        values = torch.cat(maps) if maps else images.new_zeros(0, *images.shape[-2:])
        return scatter_pairs(values.to(images.dtype), b_idx, k_idx, tuple(classes.shape))


@register_method
class Gradient(_CaptumMethod):
    """Gradient saliency (Simonyan et al., 2014): ``sum_ch |d y_c / d x|`` (captum ``Saliency``).

    Args:
        classifier: the model explained (logits).
        batch_size: (image, class) pairs per backward pass.
        absolute: sum absolute values over channels (default True; False sums signed gradients).
        layer: attribute at this layer instead of the input (a dotted name, ``input``, ``middle``, ``final``).
    """

    name = "gradient"
    layer_forms = ("input", "middle", "final")
    default_absolute = True

    def captum_attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return _captum_attr().Saliency(self.classifier).attribute(inputs, target=targets, abs=False)


@register_method
class InputXGradient(_CaptumMethod):
    """Input x gradient, signed channel sum (captum ``InputXGradient``).

    Args:
        classifier: the model explained (logits).
        batch_size: (image, class) pairs per backward pass.
        absolute: sum absolute values over channels instead of signed ones (default False).
        layer: attribute at this layer instead of the input (a dotted name, ``input``, ``middle``, ``final``).
    """

    name = "input_x_gradient"
    layer_forms = ("input", "middle", "final")
    layer_times_activation = True

    def captum_attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return _captum_attr().InputXGradient(self.classifier).attribute(inputs, target=targets)


@register_method
class IntegratedGradients(_CaptumMethod):
    """Integrated gradients (Sundararajan et al., 2017) from a zero baseline (the mean colour), signed sum.

    Args:
        classifier: the model explained (logits).
        steps: points of the path integral (captum's Gauss-Legendre rule).
        batch_size: (image, class) pairs per call; the ``pairs * steps`` scaled inputs go through the
            classifier in internal batches of ``batch_size`` rows.
        absolute: sum absolute values over channels instead of signed ones (default False).
        layer: attribute at this layer instead of the input (a dotted name, ``input``, ``middle``, ``final``).
    """

    name = "integrated_gradients"
    layer_forms = ("input", "middle", "final")
    layer_times_activation = True

    def __init__(
        self,
        classifier: nn.Module | None = None,
        steps: int = 50,
        batch_size: int = 64,
        absolute: bool | None = None,
        layer: str | None = None,
    ) -> None:
        super().__init__(classifier, batch_size, absolute, layer)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)

    def layer_path_steps(self) -> int:
        return self.steps

    def captum_attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        ig = _captum_attr().IntegratedGradients(self.classifier)
        return ig.attribute(
            inputs, baselines=0.0, target=targets, n_steps=self.steps, internal_batch_size=max(self.batch_size, 1)
        )


@register_method
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
