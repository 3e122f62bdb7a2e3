"""The Python entry points: name a classifier, train an Explainer for it, get the export back.

import explainer
model = ...                                   # any trained nn.Module, a TorchScript or .pt2 file, ...
exp = explainer.fit(classifier=model, datamodule=data, export="checkpoints/mine", max_epochs=5)
masks = exp.explain(images)                   # [B, C, H, W]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from explainer.callbacks import ExplainerMetrics, ExportExplainer
from explainer.classifiers.source import ClassifierSpec, load_classifier
from explainer.export import load
from explainer.modules import ExplainerModule


def classifier(source: Any, *, num_classes: int | None = None, **options: Any) -> Any:
    """The classifier to explain, frozen and adapted (see :mod:`explainer.classifiers.source`).

    Args:
        source: an ``nn.Module``; a ``ClassifierModule`` checkpoint; a TorchScript or ``.pt2`` file; an
            architecture name / ``package.module:factory`` with ``weights=...``; or a dict of classifier
            options (a ``classifier:`` sub-config), to which ``options`` are added.
        num_classes: the head size of an architecture name or factory.
        **options: ``weights``, ``output``, ``returns``, ``activation``, ``mean``, ``std``, ``input_size``,
            ``class_names``, ``allow_partial_weights``.

    Returns:
        A :class:`~explainer.classifiers.frozen.FrozenClassifier`.
    """
    if isinstance(source, ClassifierSpec):
        source = {k: getattr(source, k) for k in ClassifierSpec.__dataclass_fields__}
    spec = {**source, **options} if isinstance(source, Mapping) else {"source": source, **options}
    return load_classifier(spec, num_classes=num_classes)


def fit(
    classifier: Any,
    datamodule: Any,
    export: str | Path = "checkpoints/explainer",
    *,
    max_epochs: int = 5,
    overwrite: bool = False,
    trainer: dict[str, Any] | None = None,
    **explainer_options: Any,
) -> Any:
    """Trains an Explainer for ``classifier`` on ``datamodule``, exports the best epoch, and loads the export.

    Args:
        classifier: what :class:`~explainer.modules.ExplainerModule` takes: a model, a path, a dict of
            classifier options, or the result of :func:`classifier`.
        datamodule: a data module of this library (its class names and normalisation are used).
        export: the export folder; an existing export there is an error unless ``overwrite``.
        max_epochs: training epochs.
        overwrite: replace an export in ``export``.
        trainer: more ``lightning.pytorch.Trainer`` arguments (``accelerator``, ``precision``, ``logger``, ...;
            by default no logger, a progress bar, checkpoints under ``runs/explainer``).
        **explainer_options: :class:`~explainer.modules.ExplainerModule` arguments (``mask_net``,
            ``mask_net_kwargs``, loss weights, ``fill``, ``lr``, ...).

    Returns:
        The exported Explainer (:func:`explainer.load` of ``export``).
    """
    if not hasattr(datamodule, "class_names"):
        raise TypeError(
            f"explainer.fit needs a data module of this library (with class_names), got {type(datamodule).__name__}"
        )
    module = ExplainerModule(
        classifier=classifier,
        num_classes=datamodule.num_classes,
        class_names=list(datamodule.class_names),
        **explainer_options,
    )
    options = {"max_epochs": max_epochs, "logger": False, "default_root_dir": "runs/explainer", **(trainer or {})}
    callbacks = [
        ExplainerMetrics(),
        ExportExplainer(folder=str(export), overwrite=overwrite),
        ModelCheckpoint(monitor="val/loss", mode="min", save_top_k=1, filename="best-{epoch:02d}-{step}"),
    ]
    callbacks += list(options.pop("callbacks", []))
    pl.Trainer(callbacks=callbacks, **options).fit(module, datamodule=datamodule)
    return load(export)


__all__ = ["classifier", "fit"]
