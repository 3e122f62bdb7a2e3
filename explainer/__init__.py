"""explainer: learned explainers of image classifiers on PyTorch Lightning.

    import explainer
    model = explainer.load("checkpoints/quickstart/explainer")
    masks = model.explain(images)            # [B, C, H, W], one forward pass
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(path: Any, map_location: Any = "cpu", *, allow_factories: Any = ()) -> Any:
    """Loads an exported Explainer folder or checkpoint (see :func:`explainer.export.load`). Loading never runs
    code from the files; ``allow_factories`` names ``package.module:factory`` classifiers you trust."""
    from explainer.export import load as _load

    return _load(path, map_location=map_location, allow_factories=allow_factories)


__all__ = ["__version__", "load"]
