"""Attribution methods behind one interface: ``attribute(images, classes) -> maps[B, K, H, W]``."""

from explainer.methods.base import (
    AttributionMethod,
    available_methods,
    build_method,
    check_classes,
    gather_classes,
    present_classes,
    register_method,
)
from explainer.methods.prototypes import PrototypeAttribution  # noqa: F401  (registers "prototypes")

__all__ = [
    "AttributionMethod",
    "available_methods",
    "build_method",
    "check_classes",
    "gather_classes",
    "present_classes",
    "register_method",
]
