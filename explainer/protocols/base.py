"""The protocol object: every fact about a grid protocol, in one place.

A grid protocol (Rao, Boehle and Schiele, CVPR 2022) explains a classifier on ``n x n`` mosaics of
confidently classified images and scores how much of each map falls in the cell of the explained class.
The protocols differ in a few facts, and each is a field of :class:`Protocol`:

* ``per_cell``: the wrapper has one head per cell (``n^2 x C`` logits, class ``c`` of cell ``i`` at
  ``i * C + c``), or one set of ``C`` logits for the whole grid;
* ``repeats``: the bottom-right cell repeats the top-left class (a method that lights up every instance
  of a class fails there), and only those two cells are scored; otherwise every cell holds a distinct
  class and every cell is scored;
* ``layers``: where a layer attribution (ML-Att) may be taken (``input``, ``middle``, ``final``);
* ``wrapper``: the :class:`~explainer.protocols.wrappers.ProtocolNet` that turns a classifier into the
  protocol's model.

Code outside :mod:`explainer.protocols` asks :func:`get_protocol` for the object and reads its fields; it
never compares protocol names. A new protocol is one :class:`Protocol` registered in
:mod:`explainer.protocols.wrappers`, next to its wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass

from explainer.registry import Registry

LAYER_ROLES = ("input", "middle", "final")
"""The layer roles of ML-Att: the image itself, the block halfway through the features, the last block."""


@dataclass(frozen=True)
class Protocol:
    """One grid protocol.

    Args:
        name: the name users type (``--protocol difull``).
        title: the name in figures and docs.
        per_cell: one head per cell (``n^2 x C`` logits) instead of ``C`` logits for the grid.
        repeats: the bottom-right cell repeats the top-left class; only those two cells are scored.
        layers: the layer roles a layer attribution may use under this protocol.
        wrapper: the ``ProtocolNet`` subclass that wraps a classifier for the protocol.
        guarantee: what the wrapper guarantees about the cells, in a few words (for errors and docs).
    """

    name: str
    title: str
    per_cell: bool
    repeats: bool
    layers: tuple[str, ...]
    wrapper: type
    guarantee: str = ""

    def min_grid_size(self) -> int:
        """The smallest ``n``: 2 when a class repeats (two distinct cells are needed), else 1."""
        return 2 if self.repeats else 1

    def check_grid_size(self, grid_size: int) -> int:
        """``grid_size`` as an int, or an error naming the smallest one this protocol accepts."""
        if int(grid_size) < self.min_grid_size():
            raise ValueError(f"grid_size must be >= {self.min_grid_size()} for {self.name}, got {grid_size}")
        return int(grid_size)

    def label_cells(self, grid_size: int) -> int:
        """How many times the class list repeats in the label space: ``n^2`` per-cell, else 1."""
        return grid_size**2 if self.per_cell else 1

    def num_labels(self, base_classes: int, grid_size: int) -> int:
        """The size of the label space (and of the wrapper's logits) for a ``base_classes`` classifier."""
        return base_classes * self.label_cells(grid_size)

    def label_index(self, cell: int, base_class: int, base_classes: int) -> int:
        """The label index of class ``base_class`` placed in cell ``cell``."""
        return cell * base_classes + base_class if self.per_cell else base_class

    def class_names(self, names: list[str], grid_size: int) -> list[str]:
        """The label names: ``cell<i>:<name>`` per cell and class when ``per_cell``, else ``names``."""
        if not self.per_cell:
            return list(names)
        return [f"cell{i}:{name}" for i in range(grid_size**2) for name in names]

    def distinct_classes(self, grid_size: int) -> int:
        """How many distinct classes one grid holds."""
        return grid_size**2 - 1 if self.repeats else grid_size**2

    def scored_cells(self, grid_size: int) -> list[int]:
        """The cells whose class is explained and scored: the top-left and bottom-right (the repeated class)
        when a class repeats, else every cell."""
        self.check_grid_size(grid_size)
        return [0, grid_size**2 - 1] if self.repeats else list(range(grid_size**2))

    def explained(self, grid_size: int) -> str:
        """What the rows' ``targets`` column says was explained: the scored cells' classes."""
        return "cells " + ",".join(str(c) for c in self.scored_cells(grid_size))

    def check_layer(self, role: str) -> None:
        """An error when a layer attribution may not use ``role`` under this protocol."""
        if role in LAYER_ROLES and role not in self.layers:
            why = f" ({self.guarantee})" if self.guarantee else ""
            raise ValueError(
                f"under {self.title} only the {' and '.join(self.layers)} layers hold one map per "
                f"grid{why}; use --layer {' or '.join(self.layers)}"
            )


PROTOCOLS: Registry[Protocol] = Registry("protocol", plural="protocols", sort=False)
"""The grid protocols by name, in the order of registration."""


def register_protocol(protocol: Protocol) -> Protocol:
    """Adds ``protocol`` to :data:`PROTOCOLS` (a name taken by another protocol is an error)."""
    return PROTOCOLS.add(protocol.name, protocol)


def get_protocol(name: str | Protocol) -> Protocol:
    """The protocol of ``name`` (a :class:`Protocol` passes through); an unknown name lists the valid ones."""
    return name if isinstance(name, Protocol) else PROTOCOLS.get(name)


__all__ = ["LAYER_ROLES", "PROTOCOLS", "Protocol", "get_protocol", "register_protocol"]
