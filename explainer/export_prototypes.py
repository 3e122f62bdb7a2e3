"""Export and loading of fitted part-prototype heads.

An export is a folder with

* ``model.safetensors``: ``prototypes`` ``[C, k, D]``, ``bias`` ``[C]`` and ``num_prototypes`` ``[C]``
  (how many prototypes of each class are real; the rest are zero padding);
* ``config.json``: the format name, the library version, the class names, ``k``, the feature dimension,
  and the classifier it decomposes, by reference (its checkpoint path and backbone name) and by content
  hash (:attr:`~explainer.classifiers.FrozenClassifier.content_hash`); the classifier's weights are not
  copied.

:func:`load_prototypes` rebuilds the :class:`~explainer.nets.prototypes.PrototypeLayer`;
:func:`load_prototype_classifier` also loads the referenced classifier and checks its hash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import explainer
from explainer.atomic import check_replaceable, replacing_folder
from explainer.classifiers.frozen import FrozenClassifier
from explainer.classifiers.source import load_classifier
from explainer.export import check_finite
from explainer.nets.prototypes import PrototypeLayer
from explainer.trust import loading_from

FORMAT = "explainer-prototypes"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def export_prototypes(
    layer: PrototypeLayer,
    folder: str | Path,
    class_names: list[str] | None,
    classifier: FrozenClassifier,
    num_prototypes: Tensor | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    classifier_spec: Any = None,
) -> Path:
    """Writes a fitted prototype head to ``folder``.

    Args:
        layer: the fitted layer.
        folder: the export folder (created); must not hold an export already unless ``overwrite``.
        class_names: class names in logit order (``None``: ``"0".."C-1"``).
        classifier: the classifier the head decomposes (referenced and hashed, not copied).
        num_prototypes: ``[C]`` real prototypes per class (default: all ``k``).
        extra: more JSON-serialisable facts to record under ``"fit"`` (settings, timings).
        overwrite: replace an existing export.
        classifier_spec: the classifier options it was built from (plain data, recorded to load it again;
            default: its reference).

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if not overwrite and ((folder / WEIGHTS_FILE).exists() or (folder / CONFIG_FILE).exists()):
        raise FileExistsError(f"'{folder}' already holds an export; choose another folder or pass overwrite=True")
    names = list(class_names) if class_names is not None else [str(i) for i in range(layer.num_classes)]
    if len(names) != layer.num_classes:
        raise ValueError(f"{len(names)} class names for a head of {layer.num_classes} classes")
    counts = (
        torch.full((layer.num_classes,), layer.prototypes_per_class, dtype=torch.long)
        if num_prototypes is None
        else num_prototypes.detach().to("cpu", torch.long)
    )
    tensors = {
        "prototypes": layer.prototypes.detach().to("cpu", torch.float32).contiguous(),
        "bias": layer.bias.detach().to("cpu", torch.float32).contiguous(),
        "num_prototypes": counts.contiguous(),
    }
    check_finite(tensors, "the prototype head")
    config = {
        "format": FORMAT,
        "version": explainer.__version__,
        "class_names": names,
        "num_classes": layer.num_classes,
        "prototypes_per_class": layer.prototypes_per_class,
        "feature_dim": layer.feature_dim,
        "classifier": {
            "reference": classifier.reference,
            "spec": classifier_spec if classifier_spec is not None else classifier.reference,
            "content_hash": classifier.content_hash,
            "backbone": getattr(classifier.net, "name", ""),
        },
        "fit": extra or {},
    }
    check_replaceable(folder, CONFIG_FILE, FORMAT, frozenset({CONFIG_FILE, WEIGHTS_FILE}), True, "prototype export")
    with replacing_folder(folder) as staging:  # a new folder renamed into place: no stale files
        save_file(tensors, str(staging / WEIGHTS_FILE))
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return folder


def load_prototypes(folder: str | Path) -> tuple[PrototypeLayer, dict[str, Any]]:
    """Rebuilds the prototype layer of an export.

    Args:
        folder: a folder written by :func:`export_prototypes`.

    Returns:
        ``(layer, config)``; ``config["num_prototypes"]`` holds the real prototypes per class as a list.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"'{folder}' is not a prototype export: it needs {CONFIG_FILE} and {WEIGHTS_FILE} (written by "
            "`train.py fit --config configs/quickstart/prototypes.yaml` or export_prototypes())"
        )
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"'{folder / CONFIG_FILE}' is not a prototype export (format {config.get('format')!r})")
    tensors = load_file(str(folder / WEIGHTS_FILE))
    protos = tensors["prototypes"]
    expected = (config["num_classes"], config["prototypes_per_class"], config["feature_dim"])
    if tuple(protos.shape) != expected:
        raise ValueError(f"'{folder}': prototypes of shape {tuple(protos.shape)} but config.json says {expected}")
    layer = PrototypeLayer(*expected)
    layer.set_prototypes(protos, tensors["bias"])
    config["num_prototypes"] = tensors["num_prototypes"].tolist()
    return layer, config


def load_prototype_classifier(
    folder: str | Path, classifier: str | Path | None = None
) -> tuple[FrozenClassifier, PrototypeLayer, dict[str, Any]]:
    """Loads an export together with the classifier it decomposes, checking the classifier's hash.

    Args:
        folder: the export folder.
        classifier: the classifier (a checkpoint path, classifier options or an ``nn.Module``; default: the one
            recorded in ``config.json``, whose ``package.module:factory`` names are refused unless allowed).

    Returns:
        ``(classifier, layer, config)``.

    Raises:
        ValueError: the classifier's weights differ from the ones the head was fitted to.
    """
    layer, config = load_prototypes(folder)
    path = (
        classifier if classifier is not None else config["classifier"].get("spec") or config["classifier"]["reference"]
    )
    with loading_from(f"the prototype export {Path(folder) / CONFIG_FILE}"):
        frozen = load_classifier(path, num_classes=config["num_classes"])
    expected = config["classifier"]["content_hash"]
    if frozen.content_hash != expected:
        raise ValueError(
            f"the classifier '{path}' is not the one the prototypes in '{folder}' were fitted to (content hash "
            f"{frozen.content_hash[:12]}... vs {expected[:12]}...); refit the prototypes for this classifier"
        )
    return frozen, layer, config


__all__ = ["export_prototypes", "load_prototype_classifier", "load_prototypes"]
