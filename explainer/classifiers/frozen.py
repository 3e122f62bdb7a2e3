"""The Explanandum: a trained classifier that is really frozen."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from explainer.checkpoint import read_checkpoint
from explainer.classifiers.factory import ClassifierNet, build_classifier
from explainer.trust import loading_from


def state_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class FrozenClassifier(nn.Module):
    """Wraps a trained classifier so that it is never updated.

    * eval mode is pinned: ``train(True)`` (which Lightning calls every epoch) keeps it in eval mode, so
      dropout stays off and BatchNorm statistics never move;
    * every parameter has ``requires_grad=False``, so no optimiser can pick it up, while gradients still
      flow *through* it to its input (a mask network upstream gets them).

    Args:
        net: the trained classifier (outputs logits).
        reference: where it came from (a checkpoint path or a name), recorded by exports.
        class_names: the class names, in logit order.
    """

    def __init__(self, net: nn.Module, reference: str = "", class_names: list[str] | None = None) -> None:
        super().__init__()
        self.net = net
        self.reference = reference
        self.class_names = list(class_names) if class_names is not None else None
        self.net.requires_grad_(False)
        super().train(False)
        self._hash: str | None = None

    def train(self, mode: bool = True) -> FrozenClassifier:
        """Ignores ``mode``: the classifier stays in eval mode."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, C]`` of normalised images ``[B, 3, H, W]``."""
        return self.net(images)

    @property
    def num_classes(self) -> int:
        """The number of logits."""
        if isinstance(self.net, ClassifierNet):
            try:
                return self.net.num_classes
            except AttributeError:
                pass
        if self.class_names is not None:
            return len(self.class_names)
        raise AttributeError("the classifier's class count is unknown; pass class_names")

    @property
    def content_hash(self) -> str:
        """SHA-256 of the weights (computed once; the weights cannot change)."""
        if self._hash is None:
            self._hash = state_hash(self.net)
        return self._hash

    @classmethod
    def from_checkpoint(cls, path: str | Path, num_classes: int | None = None, *,
                        allow_factories: Iterable[str] = ()) -> FrozenClassifier:
        """Loads the classifier of a :class:`~explainer.modules.classifier.ClassifierModule` checkpoint.

        The checkpoint is data: a ``package.module:factory`` backbone it names is refused before any import
        unless registered, in ``allow_factories`` or in ``EXPLAINER_ALLOW_FACTORIES``
        (:func:`~explainer.classifiers.factory.loading_from`).

        Args:
            path: a Lightning checkpoint written by ``train.py`` for a ``ClassifierModule``.
            num_classes: the class count the caller needs (e.g. the data module's); a mismatch is an error
                naming both numbers.
            allow_factories: ``package.module:factory`` backbones the checkpoint may name.

        Returns:
            The frozen classifier, on the CPU.
        """
        ckpt = read_checkpoint(path)
        hp = ckpt.get("hyper_parameters", {})
        if "backbone" not in hp or "num_classes" not in hp:
            raise ValueError(
                f"'{path}' is not a ClassifierModule checkpoint (its hyper-parameters lack 'backbone' and "
                "'num_classes'); train the classifier with `train.py fit --config configs/...classifier.yaml`"
            )
        if num_classes is not None and int(hp["num_classes"]) != int(num_classes):
            raise ValueError(
                f"class-count mismatch: the classifier '{path}' has {hp['num_classes']} classes but the data "
                f"module has {num_classes}"
            )
        with loading_from(f"the checkpoint {path} (hyper_parameters.backbone)", allow_factories):
            net = build_classifier(hp["backbone"], int(hp["num_classes"]))
        prefix = "net."
        state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        net.load_state_dict(state)
        return cls(net, reference=str(path), class_names=hp.get("class_names"))
