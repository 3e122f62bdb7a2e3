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

from explainer.trust import check_trusted, loading_from

RESTORABLE_MODULES = (
    "ClassifierModule",
    "ExplainerModule",
    "RealTimeSaliencyModule",
    "FastSHAPModule",
    "PrototypeModule",
    "InfillerModule",
)
"""The LightningModules of :mod:`explainer.modules` that ``train.py --ckpt_path`` restores."""


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
    except Exception as err:  # torch.load raises many error types on files that are not checkpoints
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not isinstance(err, (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError)):
            # the unpickler met bytes of another format (KeyError, IndexError, UnicodeDecodeError, ...)
            first = "the file is in another format (text, an image, or a damaged file)"
        raise ValueError(
            f"'{path}' is not a readable PyTorch checkpoint (read weights-only, so pickled objects are "
            f"refused): {first}"
        ) from err
    if expect_lightning and (not isinstance(ckpt, dict) or "state_dict" not in ckpt):
        raise ValueError(f"'{path}' is a PyTorch file but not a Lightning checkpoint (it has no 'state_dict')")
    return ckpt


def _class_name(path: Any) -> str | None:
    """``explainer.modules.ExplainerModule``, ``explainer.modules.explainer_module.ExplainerModule`` and the
    older ``explainer.modules.explainer.ExplainerModule`` alike."""
    if not isinstance(path, str):
        return None
    module, _, name = path.rpartition(".")
    return name if module.split(".")[:2] == ["explainer", "modules"] else None


def _class_specs(value: Any, where: str = "") -> list[tuple[str, str]]:
    """Every nested ``class_path`` / ``init_args`` (what jsonargparse instantiates) below the top level."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if where and key in ("class_path", "init_args", "_class_path", "_instantiator"):
                found.append((where, str(key)))
            found += _class_specs(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found += _class_specs(item, f"{where}[{index}]")
    return found


def check_resume_checkpoint(path: str | Path, model: Any) -> None:
    """Refuses a ``--ckpt_path`` checkpoint that would name code to import, or another module than the config's.

    Lightning turns a checkpoint's ``hyper_parameters._class_path`` into the model's ``class_path`` and its
    other hyper-parameters into init args. Here the recorded class must be one of the project's modules
    (:mod:`explainer.modules`) and the one the config trains, and a recorded ``package.module:factory``
    backbone must be the one the config names, registered, or allowed (``EXPLAINER_ALLOW_FACTORIES``).
    """
    hp = read_checkpoint(path).get("hyper_parameters") or {}
    for where, key in _class_specs(hp):
        raise ValueError(
            f"--ckpt_path {path}: hyper_parameters{where} holds a '{key}' entry, which would make the "
            "command line build an object of the class it names; a checkpoint may only hold plain "
            "values there. Remove the entry or start from the weights with init_from"
        )
    recorded = hp.get("_class_path")
    known = RESTORABLE_MODULES
    if recorded is not None and _class_name(recorded) not in known:
        raise ValueError(
            f"--ckpt_path {path} names the model class {recorded!r}; only the project's modules "
            f"({', '.join(known)}) are restored from a checkpoint"
        )
    configured = model.get("class_path") if hasattr(model, "get") else None
    if recorded is not None and configured is not None and _class_name(configured) != _class_name(recorded):
        raise ValueError(
            f"--ckpt_path {path} is a checkpoint of {_class_name(recorded)}, but the config trains "
            f"{_class_name(configured) or configured}; pass a checkpoint of the same module, or "
            "start from its weights with the module's own option (e.g. init_from)"
        )
    init_args = (model.get("init_args") if hasattr(model, "get") else None) or {}
    typed_kwargs = init_args.get("mask_net_kwargs") if hasattr(init_args, "get") else None
    typed = {
        "backbone": init_args.get("backbone") if hasattr(init_args, "get") else None,
        "mask_net_kwargs.backbone": typed_kwargs.get("backbone") if hasattr(typed_kwargs, "get") else None,
    }
    kwargs = hp.get("mask_net_kwargs") if isinstance(hp.get("mask_net_kwargs"), dict) else {}
    for field, value in (("backbone", hp.get("backbone")), ("mask_net_kwargs.backbone", kwargs.get("backbone"))):
        if isinstance(value, str) and value != typed[field]:
            with loading_from(f"the checkpoint {path} (hyper_parameters.{field})"):
                check_trusted(value)
