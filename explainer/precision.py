"""Numerical precision: the ``auto-mixed`` setting of the presets, and autocast outside a Trainer.

A YAML value cannot depend on the machine, so the presets set ``trainer.precision: auto-mixed`` and the
command lines (``train.py``, ``evaluate.py``) resolve it before the Trainer is built:

* ``bf16-mixed`` on a CUDA GPU that supports bfloat16 (Ampere and later);
* ``16-mixed`` on other CUDA GPUs (float16 autocast with a gradient scaler);
* ``32-true`` without CUDA (a CPU run stays in float32).

Every other value is one of Lightning's own and passes through unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch.utilities import rank_zero_info

AUTO_MIXED = "auto-mixed"

PrecisionOption = _PRECISION_INPUT | Literal["auto-mixed"] | None
"""What ``--trainer.precision`` accepts: Lightning's values and ``auto-mixed``."""

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
"""The autocast dtype of each mixed precision that :func:`autocast_dtype` accepts."""


def resolve_precision(value: Any, log: bool = True) -> Any:
    """``auto-mixed`` as the precision this machine has; any other value unchanged.

    Args:
        value: a Lightning precision (``32-true``, ``bf16-mixed``, ``16-mixed``, ...), ``auto-mixed`` or ``None``.
        log: log the choice made for ``auto-mixed`` (on rank zero).

    Returns:
        The precision to give the Trainer.
    """
    if value != AUTO_MIXED:
        return value
    if not torch.cuda.is_available():
        chosen, why = "32-true", "no CUDA device"
    elif torch.cuda.is_bf16_supported():
        chosen, why = "bf16-mixed", f"{torch.cuda.get_device_name()} supports bfloat16"
    else:
        chosen, why = "16-mixed", f"{torch.cuda.get_device_name()} has no bfloat16"
    if log:
        rank_zero_info(f"precision {AUTO_MIXED}: {chosen} ({why})")
    return chosen


def autocast_dtype(precision: str | None, device: torch.device | str | None = None) -> torch.dtype | None:
    """The autocast dtype of a mixed precision (``bf16-mixed``, ``16-mixed``, ``auto-mixed``); ``None`` for
    ``None`` or a float32 one (``32-true``, ``32``).

    Args:
        precision: the precision.
        device: where the network runs: ``auto-mixed`` on a device other than CUDA is float32.

    Raises:
        ValueError: another value, naming the accepted ones.
    """
    if precision == AUTO_MIXED and device is not None and torch.device(device).type != "cuda":
        return None
    precision = resolve_precision(precision, log=False)
    if precision is None or str(precision) in ("32-true", "32"):
        return None
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(
            f"precision {precision!r} is not one explain() can run: use None (float32), "
            f"{', '.join(repr(p) for p in AUTOCAST_DTYPES)} or {AUTO_MIXED!r}"
        )
    return AUTOCAST_DTYPES[precision]


__all__ = ["AUTOCAST_DTYPES", "AUTO_MIXED", "PrecisionOption", "autocast_dtype", "resolve_precision"]
