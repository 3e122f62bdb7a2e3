"""Classifier wrappers for the controlled localisation protocols of Rao, Boehle and Schiele (CVPR 2022).

An ``n x n`` grid image holds ``n^2`` cells of ``S x S`` pixels (cell ``i`` at row ``i // n``, column
``i % n``). Each wrapper is a ``nn.Module`` that takes grid images ``[B, 3, nS, nS]`` and returns logits:

* :class:`GridPGNet` (``gridpg``): the classifier on the whole grid. Its head is applied at every location
  of the feature map (a linear head becomes a 1x1 convolution) and the class-logit map is averaged over
  the whole grid, giving ``[B, C]`` logits; for a linear head over global average pooling this equals the
  classifier's own output on the grid. Nothing stops the logit of a class from depending on any cell.
* :class:`DiFullNet` (``difull``): every cell goes through the backbone on its own (the cells are moved
  into the batch) and has its own head, giving ``[B, n^2 * C]`` logits where index ``i * C + c`` is class
  ``c`` in cell ``i``. The logit of cell ``i`` cannot depend on any other cell, so attribution outside
  cell ``i`` is provably wrong.
* :class:`DiPartNet` (``dipart``): the backbone on the whole grid, the feature map cropped per cell, then
  pooled and classified per cell (same ``[B, n^2 * C]`` layout). Receptive fields still cross cell borders,
  so the guarantee is partial.

Every wrapper runs the grid-shaped final feature map ``[B, D, n h, n w]`` through an identity module named
``grid_features`` (:attr:`ProtocolNet.default_layer`): hooking it gives Grad-CAM and the layer attributions
of ML-Att one feature map per grid, also for DiFull whose backbone sees the cells separately. The wrapped
classifier's own layers are under ``base`` (e.g. ``base.features.2``); under DiFull their activations are
per cell (``[B n^2, ...]``) and cannot be attributed as a grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.classifiers.factory import ClassifierNet
from explainer.classifiers.frozen import FrozenClassifier
from explainer.protocols.base import Protocol, get_protocol, register_protocol


def split_cells(images: Tensor, n: int) -> Tensor:
    """``[B, ch, nS, nS]`` to ``[B n^2, ch, S, S]`` (cells in row-major order, image by image)."""
    b, ch, h, w = images.shape
    if h % n or w % n:
        raise ValueError(f"a {n}x{n} grid needs a size divisible by {n}, got {h}x{w}")
    cells = images.reshape(b, ch, n, h // n, n, w // n).permute(0, 2, 4, 1, 3, 5)
    return cells.reshape(b * n * n, ch, h // n, w // n)


def tile_cells(cells: Tensor, n: int) -> Tensor:
    """The inverse of :func:`split_cells`: ``[B n^2, ch, s, s]`` to ``[B, ch, n s, n s]``."""
    bn, ch, h, w = cells.shape
    b = bn // (n * n)
    return cells.reshape(b, n, n, ch, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, ch, n * h, n * w)


def cell_slices(size: tuple[int, int], n: int, index: int) -> tuple[slice, slice]:
    """Row and column slices of cell ``index`` in a map of ``size`` ``(H, W)`` (divisible by ``n``)."""
    h, w = size
    r, c = divmod(int(index), n)
    return slice(r * h // n, (r + 1) * h // n), slice(c * w // n, (c + 1) * w // n)


class ProtocolNet(nn.Module):
    """Base of the grid wrappers.

    Args:
        base: the classifier, split into ``features -> pool -> head`` (a :class:`ClassifierNet` from the
            factory); its pooling must be global average pooling and its head must act on the last
            dimension of the pooled features (a linear layer, or linear layers with activations).
        grid_size: ``n`` of the ``n x n`` grid.
    """

    protocol = ""
    """The protocol's name (its :class:`~explainer.protocols.base.Protocol` is :attr:`spec`)."""
    default_layer = "grid_features"

    def __init__(self, base: nn.Module, grid_size: int = 2) -> None:
        super().__init__()
        if not isinstance(base, ClassifierNet) or base.features is None:
            raise ValueError(
                f"the {self.protocol or 'grid'} protocol needs a classifier split into features, pool and head "
                f"(a ClassifierNet from explainer.classifiers.build_classifier), got {type(base).__name__}"
            )
        if not isinstance(base.pool, nn.AdaptiveAvgPool2d) or base.pool.output_size not in (1, (1, 1)):
            raise ValueError(
                f"the {self.protocol} protocol needs global average pooling before the head; classifier "
                f"'{base.name}' pools with {base.pool}"
            )
        if not base.flatten:
            raise ValueError(f"classifier '{base.name}' has a head that pools by itself; it cannot be applied per cell")
        if grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {grid_size}")
        self.base = base
        self.grid_size = int(grid_size)
        self.grid_features = nn.Identity()

    @property
    def spec(self) -> Protocol:
        """The protocol this wrapper implements."""
        return get_protocol(self.protocol)

    @property
    def base_classes(self) -> int:
        """``C``, the wrapped classifier's class count."""
        return self.base.num_classes

    @property
    def num_classes(self) -> int:
        """The number of logits of the wrapper."""
        return self.spec.num_labels(self.base_classes, self.grid_size)

    def per_cell_head(self, grid_feats: Tensor) -> Tensor:
        """``[B, n^2 * C]`` logits: the grid feature map cropped per cell, pooled, classified."""
        cells = split_cells(grid_feats, self.grid_size)
        logits = self.base.head(cells.mean(dim=(2, 3)))
        return logits.reshape(grid_feats.shape[0], -1)


class GridPGNet(ProtocolNet):
    """GridPG: the classifier on the whole grid, head at every location, class-logit map averaged."""

    protocol = "gridpg"

    def forward(self, images: Tensor) -> Tensor:
        feats = self.grid_features(self.base.features(images))
        per_location = self.base.head(feats.permute(0, 2, 3, 1))  # [B, h, w, C]: the head as a 1x1 convolution
        return per_location.mean(dim=(1, 2))


class DiFullNet(ProtocolNet):
    """DiFull: each cell through the backbone on its own, one head per cell."""

    protocol = "difull"

    def forward(self, images: Tensor) -> Tensor:
        feats = self.base.features(split_cells(images, self.grid_size))
        return self.per_cell_head(self.grid_features(tile_cells(feats, self.grid_size)))


class DiPartNet(ProtocolNet):
    """DiPart: the backbone on the whole grid, the feature map cropped per cell, pooled and classified."""

    protocol = "dipart"

    def forward(self, images: Tensor) -> Tensor:
        feats = self.grid_features(self.base.features(images))
        # crop by the cells' footprint on the feature map and pool each crop: adaptive pooling to n x n
        pooled = F.adaptive_avg_pool2d(feats, self.grid_size)  # [B, D, n, n]
        logits = self.base.head(pooled.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))
        return logits.reshape(feats.shape[0], -1)


for _protocol in (
    Protocol(
        "gridpg",
        "GridPG",
        per_cell=False,
        repeats=False,
        layers=("input", "middle", "final"),
        wrapper=GridPGNet,
        guarantee="a class logit may depend on every cell",
    ),
    Protocol(
        "difull",
        "DiFull",
        per_cell=True,
        repeats=True,
        layers=("input", "final"),
        wrapper=DiFullNet,
        guarantee="the backbone sees each cell separately",
    ),
    Protocol(
        "dipart",
        "DiPart",
        per_cell=True,
        repeats=True,
        layers=("input", "middle", "final"),
        wrapper=DiPartNet,
        guarantee="receptive fields cross the cell borders",
    ),
):
    register_protocol(_protocol)


def wrap_for_protocol(classifier: nn.Module, protocol: str | Protocol, grid_size: int = 2) -> FrozenClassifier:
    """The ``protocol`` wrapper around a classifier, frozen like the classifier.

    Args:
        classifier: a :class:`~explainer.classifiers.FrozenClassifier` (or a :class:`ClassifierNet`).
        protocol: a protocol or its name (``gridpg``, ``difull``, ``dipart``).
        grid_size: ``n``.

    Returns:
        A :class:`~explainer.classifiers.FrozenClassifier` whose ``net`` is the wrapper; the class names
        are ``cell<i>:<name>`` for the per-cell protocols.
    """
    spec = get_protocol(protocol)
    grid_size = spec.check_grid_size(grid_size)
    base = classifier.net if isinstance(classifier, FrozenClassifier) else classifier
    names = getattr(classifier, "class_names", None) or [str(i) for i in range(base.num_classes)]
    net = spec.wrapper(base, grid_size)
    reference = getattr(classifier, "reference", "")
    frozen = FrozenClassifier(
        net, reference=f"{reference}#{spec.name}{grid_size}", class_names=spec.class_names(names, grid_size)
    )
    return frozen.to(next(base.parameters()).device)


@torch.no_grad()
def check_cell_independence(net: nn.Module, images: Tensor, cell: int, replacement: Tensor) -> float:
    """Largest change of cell ``cell``'s logits when every other cell is replaced by ``replacement``'s.

    A diagnostic of the DiFull guarantee (0 up to rounding there; not for GridPG or DiPart).
    """
    n = net.grid_size
    mixed = replacement.clone()
    rows, cols = cell_slices(tuple(images.shape[-2:]), n, cell)
    mixed[..., rows, cols] = images[..., rows, cols]
    c = net.base_classes
    before = net(images)[:, cell * c : (cell + 1) * c]
    after = net(mixed)[:, cell * c : (cell + 1) * c]
    return float((before - after).abs().max())


__all__ = [
    "DiFullNet",
    "DiPartNet",
    "GridPGNet",
    "ProtocolNet",
    "cell_slices",
    "check_cell_independence",
    "split_cells",
    "tile_cells",
    "wrap_for_protocol",
]
