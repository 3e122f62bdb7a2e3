"""The encoding check (Jethani et al., AISTATS 2021, "Have We Learned to Explain?").

A learned masker can make its masks carry the answer through their shape instead of showing the evidence:
the frozen classifier, which it was trained against, then reads the class off the masked image, while a
model that has only learned to classify masked images in general cannot. The check compares the two:

* ``classifier_p``: the explained classifier's probability of the target class on ``m * x``;
* ``evaluator_p``: the same for an *evaluator*, a copy of the classifier's architecture trained on images
  masked at random (``ClassifierModule(random_masks=True)``, ``configs/quickstart/evaluator.yaml``);
* ``gap``: ``classifier_p - evaluator_p``.

``m * x`` is the image with the map as a mask (in [0, 1]; masked-out pixels take the mean colour, 0 in
normalised space), as in the class-specificity test. A method whose masks show evidence keeps both
probabilities high and the gap small; a large gap (high for the classifier, low for the evaluator) flags
masks that exploit the classifier rather than show what is in the image. Compare gaps between methods
on the same classifier, evaluator and images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from explainer.metrics.common import ClassifierMetric, class_probabilities, forward_in_chunks, maps_to_unit_range


class EncodingCheck(ClassifierMetric):
    """Mean target-class probability of the classifier and of the evaluator on ``m * x`` (module docstring).

    Args:
        classifier: the explained classifier (logits).
        evaluator: the evaluator (logits over the same classes), trained on randomly masked images.
        activation: ``"sigmoid"`` (multi-label) or ``"softmax"``; the same for both models.
        chunk_size: the largest forward pass.
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better = None

    def __init__(
        self,
        classifier: nn.Module,
        evaluator: nn.Module,
        activation: str = "sigmoid",
        chunk_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(classifier, activation, chunk_size, **kwargs)
        if not callable(evaluator):
            raise TypeError(f"evaluator must be a callable nn.Module giving logits, got {type(evaluator).__name__}")
        self.__dict__["evaluator"] = evaluator  # a plain reference, like the classifier
        for name in ("classifier_sum", "evaluator_sum"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("invalid", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: Tensor, masks: Tensor, classes: Tensor) -> None:
        """Scores one batch.

        Args:
            images: ``[B, 3, H, W]`` normalised images.
            masks: ``[B, K, h, w]`` the maps of ``classes`` in [0, 1].
            classes: ``[B, K]`` explained classes (``-1``: padding).
        """
        if masks.shape[:2] != classes.shape or classes.shape[0] != images.shape[0]:
            raise ValueError(
                f"masks must be [B, K, h, w] for classes [B, K]; got masks {tuple(masks.shape)}, classes "
                f"{tuple(classes.shape)}, images {tuple(images.shape)}"
            )
        device = images.device
        masks, nonfinite = maps_to_unit_range(masks.to(device), tuple(images.shape[-2:]), "masks")
        classes = classes.to(device)
        image_index, slot = (classes >= 0).nonzero(as_tuple=True)
        target = classes[image_index, slot]
        self._add("invalid", (nonfinite & (classes >= 0)).sum())
        if len(target) == 0:
            return

        def masked(i: Tensor) -> Tensor:
            return images[image_index[i]] * masks[image_index[i], slot[i]].unsqueeze(1)

        self.evaluator.to(device)  # it lives outside the module tree (like the classifier, which the caller moves)
        for model, state in ((self.classifier, "classifier_sum"), (self.evaluator, "evaluator_sum")):
            logits = forward_in_chunks(model, masked, len(image_index), self.chunk_size, device).double()
            if logits.shape[1] <= int(target.max()):
                raise ValueError(f"a model gives {logits.shape[1]} classes but class {int(target.max())} was explained")
            p = class_probabilities(logits, self.activation).gather(1, target[:, None])[:, 0]
            self._add(state, p.sum())
        self._add("count", torch.tensor(len(image_index)))

    def compute(self) -> dict[str, Tensor]:
        """``classifier_p``, ``evaluator_p``, ``gap`` (NaN when nothing was scored) and ``invalid``."""
        count = self.count.double()
        classifier_p, evaluator_p = self.classifier_sum / count, self.evaluator_sum / count
        return {
            "classifier_p": classifier_p,
            "evaluator_p": evaluator_p,
            "gap": classifier_p - evaluator_p,
            "invalid": self.invalid.double(),
        }


__all__ = ["EncodingCheck"]
