"""``evaluate.py`` with one more method, ``partial_nan``: broken maps on some samples of every batch.

Run as a script (``python tests/evaluation/partial_nan.py <evaluate.py arguments>``) it is ``evaluate.py`` with
the method registered, in every process that Lightning's DDP launcher starts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from explainer.methods.base import AttributionMethod, register_method  # noqa: E402


@register_method
class PartialNaN(AttributionMethod):
    """The map of the centre baseline, but NaN everywhere on the first image of every batch."""

    name = "partial_nan"
    unit_range = True

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        h, w = images.shape[-2:]
        y = torch.linspace(-1, 1, h, dtype=images.dtype)[:, None]
        x = torch.linspace(-1, 1, w, dtype=images.dtype)[None, :]
        maps = torch.exp(-(x**2 + y**2)).expand(*classes.shape, h, w).clone()
        maps[0] = float("nan")
        return maps


if __name__ == "__main__":
    from explainer.evaluation.cli import main

    main(sys.argv[1:])
