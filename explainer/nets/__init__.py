"""Plain nn.Modules: mask networks (and, in their own files, prototype layers and in-fillers)."""

from explainer.nets.masknets import (
    available_mask_nets,
    build_mask_net,
    register_mask_net,
    transfer_class_heads,
)

__all__ = ["available_mask_nets", "build_mask_net", "register_mask_net", "transfer_class_heads"]
