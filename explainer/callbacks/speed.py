"""Channels-last memory and ``torch.compile`` for the networks of any module, as one callback.

Both pay on GPUs: convolutions in bf16/fp16 run fastest on NHWC tensors (tensor cores), and a compiled
network fuses its element-wise operations. On a CPU, channels-last changes little and compiling costs
a minute or more per network before the first step, so the presets leave both off.

The networks are changed in place (``Tensor.to(memory_format=...)`` and :meth:`torch.nn.Module.compile`), so
state-dict keys, checkpoints, exports and the classifier's content hash stay as they are.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn


def trained_network(pl_module: pl.LightningModule) -> nn.Module | None:
    """The network a module trains: ``mask_net`` of a learned explainer, ``net`` of a ``ClassifierModule``."""
    for name in ("mask_net", "net"):
        net = getattr(pl_module, name, None)
        if isinstance(net, nn.Module):
            return net
    return None


def frozen_classifier(pl_module: pl.LightningModule) -> nn.Module | None:
    """The frozen classifier's model (``classifier.net``) of a learned explainer, or ``None``."""
    classifier = getattr(pl_module, "classifier", None)
    net = getattr(classifier, "net", None)
    return net if isinstance(net, nn.Module) else None


def compilable(net: nn.Module) -> bool:
    """Whether ``net.compile()`` applies (not to a TorchScript module, a compiled form of its own)."""
    return not isinstance(net, torch.jit.ScriptModule)


class Accelerate(pl.Callback):
    """Channels-last memory and ``torch.compile`` for the mask network and the classifier.

    Applies to every learned explainer (the network ``mask_net`` and the frozen classifier ``classifier.net``)
    and to ``ClassifierModule`` (its ``net``). With ``channels_last`` the networks' weights and every batch's
    images (``batch.image``, at the start of each training / validation / test / predict batch) are stored
    NHWC; with ``compile`` the trained network is compiled in place, and with ``compile_classifier`` the
    frozen classifier too.

    Args:
        channels_last: store weights and images channels-last (NHWC).
        compile: compile the trained network (``mask_net``, or a ``ClassifierModule``'s ``net``).
        compile_classifier: compile the frozen classifier of a learned explainer.
        compile_mode: ``torch.compile``'s mode (``None``: its default; ``max-autotune`` compiles longer for
            faster kernels).
        compile_backend: ``torch.compile``'s backend (``None``: inductor; ``eager`` only traces, to check that
            a network compiles without paying for code generation).

    Example::

        trainer:
          callbacks:
            - class_path: explainer.callbacks.Accelerate
              init_args: {channels_last: true, compile: true, compile_classifier: true}
    """

    def __init__(
        self,
        channels_last: bool = False,
        compile: bool = False,
        compile_classifier: bool = False,
        compile_mode: str | None = None,
        compile_backend: str | None = None,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.compile = compile
        self.compile_classifier = compile_classifier
        self.compile_mode = compile_mode
        self.compile_backend = compile_backend
        self._done: set[int] = set()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if id(pl_module) in self._done:
            return
        self._done.add(id(pl_module))
        trained, classifier = trained_network(pl_module), frozen_classifier(pl_module)
        if trained is None and (self.compile or self.channels_last):
            raise ValueError(
                f"Accelerate found no network to change in {type(pl_module).__name__}: it applies to modules "
                "with a 'mask_net' (learned explainers) or a 'net' (ClassifierModule)"
            )
        applied = []
        if self.channels_last:
            for net in (trained, classifier):
                if net is not None:
                    net.to(memory_format=torch.channels_last)
            applied.append("channels-last")
        options = {k: v for k, v in (("mode", self.compile_mode), ("backend", self.compile_backend)) if v}
        if self.compile and trained is not None:
            trained.compile(**options)
            applied.append("compiled network")
        if self.compile_classifier:
            if classifier is None:
                raise ValueError(
                    f"compile_classifier: {type(pl_module).__name__} has no frozen classifier; set it only for "
                    "learned explainers (use compile for a ClassifierModule's own network)"
                )
            if compilable(classifier):
                classifier.compile(**options)
                applied.append("compiled classifier")
            else:
                rank_zero_info(f"Accelerate: the classifier is a {type(classifier).__name__}, left as it is")
        if applied:
            rank_zero_info(f"Accelerate: {', '.join(applied)} ({type(pl_module).__name__})")

    def _images(self, batch: Any) -> None:
        if self.channels_last and isinstance(getattr(batch, "image", None), torch.Tensor) and batch.image.ndim == 4:
            batch.image = batch.image.contiguous(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args) -> None:
        self._images(batch)

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any
    ) -> None:
        self._images(batch)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any) -> None:
        self._images(batch)

    def on_predict_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any
    ) -> None:
        self._images(batch)


__all__ = ["Accelerate", "compilable", "frozen_classifier", "trained_network"]
