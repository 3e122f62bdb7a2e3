"""The grid protocols of Rao, Boehle and Schiele (CVPR 2022): GridPG, DiFull and DiPart.

* :mod:`~explainer.protocols.base`: :class:`Protocol`, every fact about a protocol (cells per class, scored
  cells, a repeated class, allowed layers, its wrapper), and the :data:`PROTOCOLS` registry;
* :mod:`~explainer.protocols.wrappers`: the classifier wrappers (and the registration of the three protocols);
* :mod:`~explainer.protocols.grid`: the grid data sets and :class:`GridDataModule`;
* :mod:`~explainer.protocols.aggatt`: AggAtt, maps aggregated per percentile bin of the score.

The localisation score itself is a metric (:mod:`explainer.metrics.localisation`).
"""

from explainer.protocols.base import LAYER_ROLES, PROTOCOLS, Protocol, get_protocol, register_protocol
from explainer.protocols.grid import GridDataModule, GridDataset, grid_targets
from explainer.protocols.wrappers import (
    DiFullNet,
    DiPartNet,
    GridPGNet,
    ProtocolNet,
    cell_slices,
    check_cell_independence,
    split_cells,
    tile_cells,
    wrap_for_protocol,
)

__all__ = [
    "LAYER_ROLES",
    "PROTOCOLS",
    "DiFullNet",
    "DiPartNet",
    "GridDataModule",
    "GridDataset",
    "GridPGNet",
    "Protocol",
    "ProtocolNet",
    "cell_slices",
    "check_cell_independence",
    "get_protocol",
    "grid_targets",
    "register_protocol",
    "split_cells",
    "tile_cells",
    "wrap_for_protocol",
]
