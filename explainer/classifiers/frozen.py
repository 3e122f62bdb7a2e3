"""The Explanandum: a trained classifier that is really frozen."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.checkpoint import read_checkpoint
from explainer.classifiers.adapter import OutputAdapter
from explainer.classifiers.factory import ClassifierNet, build_classifier
from explainer.ops import IMAGENET_MEAN, IMAGENET_STD
from explainer.trust import loading_from


def state_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class ClassifierCheckError(ValueError):
    """The classifier to explain fails a check of :meth:`FrozenClassifier.verify`."""


_PROBE_SIZES = (224, 256, 299, 384, 128, 96, 64, 32, 28)


class FrozenClassifier(nn.Module):
    """Wraps a trained classifier so that it is never updated, and reads its outputs as logits.

    * eval mode is pinned: ``train(True)`` (which Lightning calls every epoch) keeps it in eval mode, so
      dropout stays off and BatchNorm statistics never move;
    * every parameter has ``requires_grad=False``, so no optimiser can pick it up, while gradients still
      flow *through* it to its input (a mask network upstream gets them);
    * an :class:`~explainer.classifiers.source.OutputAdapter` picks the output of a model with several,
      turns probabilities into logits, and re-normalises and resizes the images for the classifier;
    * :meth:`verify` checks all of that on real images before training starts.

    Args:
        net: the trained classifier.
        reference: where it came from (a checkpoint path or a name), recorded by exports.
        class_names: the class names, in logit order.
        adapter: how to read its outputs and feed its inputs (default: logits of a multi-label classifier
            that takes the data's images as they are).
        num_classes: the number of logits, when known without running the model.
    """

    def __init__(
        self,
        net: nn.Module,
        reference: str = "",
        class_names: list[str] | None = None,
        adapter: OutputAdapter | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.reference = reference
        self.class_names = list(class_names) if class_names is not None else None
        self.adapter = adapter if adapter is not None else OutputAdapter()
        self._num_classes = num_classes
        for param in self.net.parameters():  # (ScriptModules have no requires_grad_)
            param.requires_grad_(False)
        super().train(False)
        self._hash: str | None = None
        # images arrive normalised with the data's mean / std; these map them to the classifier's own
        self.register_buffer("in_scale", torch.ones(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", torch.zeros(1, 3, 1, 1), persistent=False)
        self.set_data_normalization(IMAGENET_MEAN, IMAGENET_STD)

    @property
    def activation(self) -> str:
        """``sigmoid`` (multi-label) or ``softmax`` (single-label): how its logits turn into probabilities."""
        return self.adapter.activation

    def probabilities(self, logits: Tensor) -> Tensor:
        """Class probabilities of logits, per :attr:`activation`."""
        return torch.softmax(logits, dim=1) if self.activation == "softmax" else torch.sigmoid(logits)

    def set_data_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The normalisation of the images it is given (the data module's); it matters only when the adapter
        names the classifier's own ``mean`` / ``std``."""
        a = self.adapter
        if a.mean is None or a.std is None:
            self.in_scale.fill_(1.0)
            self.in_shift.fill_(0.0)
            return
        data_mean, data_std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        own_mean, own_std = torch.tensor(a.mean).view(1, 3, 1, 1), torch.tensor(a.std).view(1, 3, 1, 1)
        self.in_scale.copy_(data_std / own_std)
        self.in_shift.copy_((data_mean - own_mean) / own_std)

    def train(self, mode: bool = True) -> FrozenClassifier:
        """Ignores ``mode``: the classifier stays in eval mode."""
        return super().train(False)

    def prepare(self, images: Tensor) -> Tensor:
        """The images as the classifier takes them: re-normalised and resized per the adapter."""
        if self.adapter.mean is not None:
            images = images * self.in_scale.to(images.dtype) + self.in_shift.to(images.dtype)
        size = self.adapter.input_size
        if size is not None and tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return images

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, C]`` of images ``[B, 3, H, W]`` normalised as the data module normalises them."""
        return self._check_scores(
            self.adapter.to_logits(self.adapter.select(self.net(self.prepare(images)))), len(images)
        )

    def _check_scores(self, logits: Any, batch: int) -> Tensor:
        if not isinstance(logits, Tensor) or logits.ndim != 2 or len(logits) != batch:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ClassifierCheckError(
                f"the classifier '{self.reference}' gives {got} for a batch of {batch} images; an Explainer "
                "needs class scores [B, C]. Set the classifier option output (which element of a tuple / dict "
                "output holds them), or wrap a model whose scores need reshaping"
            )
        return logits

    @property
    def num_classes(self) -> int:
        """The number of logits."""
        if self._num_classes is not None:
            return self._num_classes
        if self.class_names is not None:
            return len(self.class_names)
        if isinstance(self.net, ClassifierNet) and self.net.features is not None:
            try:
                return self.net.num_classes
            except AttributeError:
                pass
        raise AttributeError(
            f"the class count of classifier '{self.reference}' is unknown until it runs; pass "
            "class_names, or call verify(images) first"
        )

    @property
    def content_hash(self) -> str:
        """SHA-256 of the weights (computed once; the weights cannot change)."""
        if self._hash is None:
            self._hash = state_hash(self.net)
        return self._hash

    def verify(self, images: Tensor, num_classes: int | None = None) -> int:
        """Checks the freeze and the outputs on a few real images, before training.

        * the outputs, after the adapter, are ``[B, C]`` logits with ``C == num_classes`` (when given);
        * gradients reach the input (a mask network upstream can learn);
        * every module is in eval mode, no parameter needs a gradient, and running it changes no weight or
          buffer (BatchNorm statistics never move);
        * a classifier that cannot take the images' size is reported with a size it does take.

        Returns:
            The number of classes it gives. Raises :class:`ClassifierCheckError` naming the fix otherwise.
        """
        training = [name or "(top)" for name, m in self.named_modules() if m.training]
        if training:
            raise ClassifierCheckError(
                f"modules of the classifier '{self.reference}' are in training mode: {', '.join(training[:5])}"
            )
        if any(p.requires_grad for p in self.parameters()):
            raise ClassifierCheckError(f"parameters of the classifier '{self.reference}' need gradients")
        # Lightning validates under inference mode; this check needs autograd
        with torch.inference_mode(False), torch.enable_grad():
            return self._verify_run(images, num_classes)

    def _verify_run(self, images: Tensor, num_classes: int | None) -> int:
        before = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        probe = images[:2].detach().clone().requires_grad_(True)
        try:
            logits = self._check_scores(self(probe), len(probe))
        except ClassifierCheckError:
            raise
        except Exception as err:  # the model's own errors: name the size it would take, when one works
            raise ClassifierCheckError(self._size_hint(images, err)) from err
        changed = [k for k, v in self.net.state_dict().items() if k in before and not torch.equal(before[k], v)]
        if changed:
            self.net.load_state_dict(before, strict=False)
            raise ClassifierCheckError(
                f"running the classifier '{self.reference}' changed its own state ({', '.join(changed[:4])}): a "
                "BatchNorm layer in training mode? Save or export the model after model.eval()"
            )
        if num_classes is not None and logits.shape[1] != num_classes:
            raise ClassifierCheckError(
                f"the classifier '{self.reference}' gives {logits.shape[1]} class scores but the data module has "
                f"{num_classes} classes; for a model with several outputs set the classifier option output"
            )
        weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0)).to(logits)
        grad = None
        if logits.requires_grad:
            (grad,) = torch.autograd.grad((logits * weights).sum(), probe, allow_unused=True)
        if grad is None or not bool(torch.isfinite(grad).all()) or not bool(grad.abs().sum() > 0):
            state = "no gradient" if grad is None else "zero or non-finite gradients"
            raise ClassifierCheckError(
                f"the classifier '{self.reference}' passes {state} back to its input: the Explainer learns from "
                "them. Remove detach() / no_grad / argmax steps from its forward, or export it with gradients"
            )
        if self._num_classes is None:
            self._num_classes = int(logits.shape[1])
        return int(logits.shape[1])

    def _size_hint(self, images: Tensor, err: Exception) -> str:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        got = f"{images.shape[-2]}x{images.shape[-1]}"
        message = f"the classifier '{self.reference}' fails on {got} images: {first}"
        if self.adapter.input_size is not None:
            return message
        sample = images[:1].detach()
        for size in _PROBE_SIZES:
            if (size, size) == tuple(images.shape[-2:]):
                continue
            try:
                with torch.no_grad():
                    self.adapter.select(self.net(F.interpolate(sample, size=(size, size), mode="bilinear")))
            except Exception:  # noqa: S112 - probing sizes: a failure means "not this one"
                continue
            return (
                f"{message}. It takes {size}x{size} images: set the classifier option input_size: "
                f"[{size}, {size}] (images are resized for it)"
            )
        return message + ". Set the classifier option input_size to the size it takes"

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, num_classes: int | None = None, *, allow_factories: Iterable[str] = ()
    ) -> FrozenClassifier:
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
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        net.load_state_dict(state)
        adapter = OutputAdapter(activation=hp.get("activation") or "sigmoid")
        return cls(
            net,
            reference=str(path),
            class_names=hp.get("class_names"),
            adapter=adapter,
            num_classes=int(hp["num_classes"]),
        )
