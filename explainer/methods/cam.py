"""Grad-CAM (Selvaraju et al., ICCV 2017) and Grad-CAM++ (Chattopadhay et al., WACV 2018).

A vectorised implementation: every (image, class) pair of a call becomes one row of a single batch, so
one forward and one backward pass give the activations ``A`` of the target layer and the gradients of
each row's class logit with respect to them. Maps are ``relu(sum_k w_k A_k)`` upsampled bilinearly to the
input size, not normalised (normalise downstream if a metric needs it).

* Grad-CAM: ``w_k = mean_{ij} dy_c / dA_kij``.
* Grad-CAM++: ``w_k = sum_{ij} a_kij relu(dy_c / dA_kij)`` with
  ``a_kij = g^2 / (2 g^2 + sum_{ab} A_kab g^3)`` (``g = dy_c / dA_kij``; 0 where ``g = 0``), the closed
  form of the paper under its exponential-score assumption.

The target layer is a dotted module name resolved on the classifier (``net.features.5``); the default
is the last block of a :class:`~explainer.classifiers.ClassifierNet`'s ``features``: ResNet ``layer4[-1]``,
VGG ``features[-1]``, digitnet ``features[-1]``.
"""

from __future__ import annotations

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


def gradcam_weights(activations: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM's channel weights ``[N, D]``: the spatial mean of the gradients."""
    return grads.mean(dim=(2, 3))


def gradcam_plus_plus_weights(activations: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM++'s channel weights ``[N, D]``: positive gradients weighted by the closed-form alphas."""
    g2 = grads.pow(2)
    g3 = g2 * grads
    total = activations.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + total * g3 + 1e-6)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return (alpha * grads.clamp_min(0)).sum(dim=(2, 3))


class _CAM(AttributionMethod):
    needs_grad = True
    variant = "gradcam"

    def __init__(self, classifier: nn.Module | None = None, layer: str | None = None, batch_size: int = 64) -> None:
        super().__init__(classifier)
        if classifier is None:
            raise ValueError(f"{type(self).__name__} needs the classifier to explain")
        self.layer = layer_by_role(classifier, layer or "final")
        if self.layer is None:
            raise ValueError(f"{type(self).__name__} needs a convolutional layer, not the input")
        resolve_layer(classifier, self.layer)  # fails early, listing the valid names
        self.batch_size = int(batch_size)

    def layer_cams(self, images: Tensor, targets: Tensor) -> Tensor:
        """Low-resolution CAMs ``[N, h, w]`` of ``images`` ``[N, 3, H, W]`` for ``targets`` ``[N]``."""
        store: dict[str, Tensor] = {}

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, Tensor) or output.ndim != 4:
                raise ValueError(
                    f"Grad-CAM layer '{self.layer}' must output a [N, D, h, w] tensor, got "
                    f"{type(output).__name__}{'' if not isinstance(output, Tensor) else tuple(output.shape)}"
                )
            store["a"] = output

        handle = resolve_layer(self.classifier, self.layer).register_forward_hook(hook)
        try:
            x = images.detach().requires_grad_(True)
            logits = self.classifier(x)
        finally:
            handle.remove()
        if "a" not in store:
            raise ValueError(f"Grad-CAM layer '{self.layer}' was not used by the classifier's forward pass")
        acts = store["a"]
        score = logits.gather(1, targets.view(-1, 1)).sum()
        (grads,) = torch.autograd.grad(score, acts)
        acts, grads = acts.detach().float(), grads.float()
        weights = self.channel_weights(acts, grads)
        return torch.relu((weights[:, :, None, None] * acts).sum(1))

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        """Maps ``[B, K, H, W]`` of ``classes`` ``[B, K]`` (``-1`` gives a zero map), upsampled bilinearly."""
        check_classes(images, classes)
        b_idx, k_idx, c_idx = valid_pairs(classes)
        h, w = images.shape[-2:]
        maps = []
        with torch.enable_grad(), eval_mode(self.classifier):
            for part in chunk_slices(len(b_idx), self.batch_size):
                cams = self.layer_cams(images[b_idx[part]], c_idx[part])
                maps.append(F.interpolate(cams[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0])
        values = torch.cat(maps) if maps else images.new_zeros(0, h, w)
        return scatter_pairs(values.to(images.dtype), b_idx, k_idx, tuple(classes.shape))


@register_method
class GradCAM(_CAM):
    """Grad-CAM maps (see the module docstring).

    Args:
        classifier: the model explained (logits); the class logit is the score.
        layer: dotted name of the target layer on ``classifier`` (``net.features.5``, or ``features.5``
            relative to a wrapper's ``net``), or ``middle`` / ``final`` (:func:`layer_by_role`); ``None``
            picks :func:`default_cam_layer`.
        batch_size: (image, class) pairs per forward/backward pass.
    """

    name = "gradcam"
    layer_forms = ("middle", "final")
    channel_weights = staticmethod(gradcam_weights)


@register_method
class GradCAMPlusPlus(_CAM):
    """Grad-CAM++ maps (see the module docstring); same arguments as :class:`GradCAM`."""

    name = "gradcam++"
    layer_forms = ("middle", "final")
    channel_weights = staticmethod(gradcam_plus_plus_weights)
