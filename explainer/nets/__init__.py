"""Plain nn.Modules: mask networks (and, in their own files, prototype layers and in-fillers)."""

from explainer.nets.masknets import (
    available_mask_nets,
    build_mask_net,
    register_mask_net,
    transfer_class_heads,
)
from explainer.nets.selector import SelectorUNetMaskNet  # registers "selector_unet"

__all__ = ["SelectorUNetMaskNet", "available_mask_nets", "build_mask_net", "register_mask_net", "transfer_class_heads"]
from explainer.nets.shapley import ShapleyCellsNet  # noqa: E402,F401  (registers "shapley_cells")
