"""Safe checkpoint reading with clear errors.

Checkpoints are read with ``torch.load(..., weights_only=True)``: tensors and plain containers only, never
arbitrary pickled objects. The project's modules keep their hyper-parameters primitive so that this works.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


def read_checkpoint(path: str | Path, expect_lightning: bool = True) -> dict[str, Any]:
    """Reads a checkpoint file weights-only.

    Args:
        path: the ``.ckpt`` / ``.pt`` file.
        expect_lightning: require a Lightning checkpoint (a dict with ``state_dict``).

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: the path does not exist or is a folder.
        ValueError: the file is not a (Lightning) checkpoint, or holds objects beyond tensors and
            plain containers.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: '{path}'")
    if path.is_dir():
        raise FileNotFoundError(f"'{path}' is a folder, not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"'{path}' is not a readable PyTorch checkpoint (read weights-only, so pickled objects are "
            f"refused): {first}"
        ) from err
    if expect_lightning and (not isinstance(ckpt, dict) or "state_dict" not in ckpt):
        raise ValueError(f"'{path}' is a PyTorch file but not a Lightning checkpoint (it has no 'state_dict')")
    return ckpt
