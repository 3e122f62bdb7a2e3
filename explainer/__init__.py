"""explainer: learned explainers of image classifiers on PyTorch Lightning.

import explainer
model = explainer.load("checkpoints/quickstart/explainer")
masks = model.explain(images)            # [B, C, H, W], one forward pass

exp = explainer.fit(classifier=my_model, datamodule=data, export="checkpoints/mine")   # your classifier
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(path: Any, map_location: Any = "cpu", *, allow_factories: Any = ()) -> Any:
    """Loads an exported Explainer folder or checkpoint (see :func:`explainer.export.load`). Loading never runs
    code from the files; ``allow_factories`` names ``package.module:factory`` classifiers you trust."""
    from explainer.export import load as _load

    return _load(path, map_location=map_location, allow_factories=allow_factories)


def fit(classifier: Any, datamodule: Any, export: Any = "checkpoints/explainer", **options: Any) -> Any:
    """Trains, exports and loads an Explainer for any classifier (see :func:`explainer.api.fit`)."""
    from explainer.api import fit as _fit

    return _fit(classifier, datamodule, export, **options)


def classifier(source: Any, **options: Any) -> Any:
    """A frozen, adapted classifier from a model, a file or a name (see :func:`explainer.api.classifier`)."""
    from explainer.api import classifier as _classifier

    return _classifier(source, **options)


__all__ = ["__version__", "classifier", "fit", "load"]
