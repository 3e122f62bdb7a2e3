"""The classifier to explain, from wherever it comes: one description accepted everywhere.

A classifier is named by a :class:`ClassifierSpec`, written as a string, a small dict (a ``classifier:``
sub-config in YAML) or, in Python, an ``nn.Module``:

==============================  =============================================================================
``source``                      what it is
==============================  =============================================================================
``run/best.ckpt``               a ``ClassifierModule`` checkpoint written by ``train.py`` (architecture, class
                                names and weights inside)
``resnet50`` + ``weights``      a registered architecture (``digitnet``, a torchvision or timm name, a name
                                given to ``register_backbone``) with a state-dict file (``.pt`` / ``.pth`` /
                                ``.safetensors``) or a torchvision weights name (``IMAGENET1K_V1``)
``pkg.module:factory``          a user factory, called as ``factory(num_classes=C)``, with ``weights``
``model.ts``                    a TorchScript file (``torch.jit.save``): no Python class needed
``model.pt2``                   a ``torch.export`` program (``torch.export.save``): no Python class needed
an ``nn.Module``                a model already in memory (Python only)
==============================  =============================================================================

The other keys adapt what a real model returns (:class:`OutputAdapter`): ``output`` (which element of a
tuple, list or dict), ``returns`` (``logits``, ``probabilities`` or ``log_probabilities``), ``activation``
(``sigmoid`` for multi-label classifiers, ``softmax`` for single-label ones), ``mean`` / ``std`` (the
classifier's own input normalisation), ``input_size`` (the size it takes), and ``class_names``.

Whatever the source, the result is a :class:`~explainer.classifiers.frozen.FrozenClassifier` whose freeze is
checked (:meth:`~explainer.classifiers.frozen.FrozenClassifier.verify`).
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from explainer.checkpoint import read_checkpoint
from explainer.classifiers.adapter import RETURNS, OutputAdapter
from explainer.classifiers.factory import build_architecture
from explainer.classifiers.frozen import FrozenClassifier
from explainer.ops import ACTIVATIONS

WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin")
IN_MEMORY = "<in-memory"


_SPEC_KEYS = (
    "source",
    "weights",
    "output",
    "returns",
    "activation",
    "mean",
    "std",
    "input_size",
    "class_names",
    "allow_partial_weights",
)


@dataclasses.dataclass
class ClassifierSpec:
    """The classifier to explain: where it comes from and how to read its outputs (module docstring).

    Args:
        source: a ``ClassifierModule`` checkpoint, an architecture name, a ``package.module:factory``, a
            TorchScript file, a ``torch.export`` ``.pt2`` file, or an ``nn.Module``.
        weights: the weights of an architecture name or factory: a state-dict file or a torchvision weights
            name.
        output: see :class:`OutputAdapter`.
        returns: see :class:`OutputAdapter`.
        activation: see :class:`OutputAdapter`; ``None`` takes the source's (a checkpoint's), else ``sigmoid``.
        mean: see :class:`OutputAdapter`.
        std: see :class:`OutputAdapter`.
        input_size: see :class:`OutputAdapter`.
        class_names: the classifier's class names in output order, checked against the data module's.
        allow_partial_weights: accept a weights file that fills only part of the architecture's tensors
            (the others keep their initial values); without it a partial match is an error.
    """

    source: Any
    weights: str | None = None
    output: int | str | None = None
    returns: str = "logits"
    activation: str | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    input_size: Sequence[int] | None = None
    class_names: list[str] | None = None
    allow_partial_weights: bool = False

    @classmethod
    def parse(cls, value: Any) -> ClassifierSpec:
        """A spec from a string, a dict (a ``classifier:`` sub-config), an ``nn.Module`` or a spec."""
        if isinstance(value, ClassifierSpec):
            return value
        if isinstance(value, (str, Path, nn.Module)):
            return cls(source=str(value) if isinstance(value, Path) else value)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(_SPEC_KEYS))
            if unknown:
                raise ValueError(
                    f"unknown classifier option(s) {', '.join(map(repr, unknown))}; the options are "
                    f"{', '.join(_SPEC_KEYS)}"
                )
            if "source" not in value:
                raise ValueError(
                    f"a classifier sub-config needs 'source' (a checkpoint, architecture name, factory, "
                    f"TorchScript or .pt2 file); got keys {sorted(value)}"
                )
            return cls(**dict(value))
        raise TypeError(
            f"a classifier is a path or name, a dict of classifier options or an nn.Module; got {type(value).__name__}"
        )

    def adapter(self, default_activation: str = "sigmoid") -> OutputAdapter:
        """The output adapter these options describe."""
        return OutputAdapter(
            output=self.output,
            returns=self.returns,
            activation=self.activation or default_activation,
            mean=tuple(self.mean) if self.mean is not None else None,
            std=tuple(self.std) if self.std is not None else None,
            input_size=tuple(self.input_size) if self.input_size is not None else None,
        )

    @property
    def reference(self) -> str:
        """A printable name of the source."""
        if isinstance(self.source, nn.Module):
            return f"{IN_MEMORY} {type(self.source).__name__}>"
        return str(self.source) + (f" + {self.weights}" if self.weights else "")

    def to_hparams(self) -> str | dict[str, Any]:
        """Plain data for hyper-parameters: the string when only ``source`` is set, else a dict; an in-memory
        module is recorded by its class name."""
        source = self.reference.split(" + ")[0] if isinstance(self.source, nn.Module) else str(self.source)
        data = {k: getattr(self, k) for k in _SPEC_KEYS[1:]}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items() if v != defaults[k]}
        return source if not data else {"source": source, **data}


def file_kind(path: Path) -> str:
    """``torchscript``, ``export``, ``checkpoint``, ``weights`` or ``unknown``: what a model file holds, read
    from the archive's member names (nothing is loaded)."""
    if path.suffix == ".safetensors":
        return "weights"
    if path.suffix == ".ckpt":
        return "checkpoint"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    if any("/code/" in n for n in names) and not any(n.endswith("archive_format") for n in names):
        return "torchscript"
    if any(n.endswith(("archive_format", "models/model.json", "serialized_exported_program.json")) for n in names):
        return "export"
    return "weights" if path.suffix in WEIGHT_SUFFIXES else "unknown"


def load_classifier(spec: Any, num_classes: int | None = None, *, allow_factories: Iterable[str] = ()) -> Any:
    """Builds the :class:`~explainer.classifiers.frozen.FrozenClassifier` a spec names.

    Args:
        spec: a :class:`ClassifierSpec`, or what :meth:`ClassifierSpec.parse` takes; a ``FrozenClassifier``
            is returned as it is.
        num_classes: the class count the data module has (the head size of an architecture name or
            factory; a checkpoint with another count is an error).
        allow_factories: ``package.module:factory`` names a checkpoint may use (see :mod:`explainer.trust`).

    Returns:
        The frozen classifier on the CPU (eval mode, no parameter needing gradients).
    """

    if isinstance(spec, FrozenClassifier):
        return spec
    spec = ClassifierSpec.parse(spec)
    source = spec.source
    if isinstance(source, FrozenClassifier):
        return source
    if isinstance(source, nn.Module):
        return FrozenClassifier(
            source,
            reference=spec.reference,
            class_names=spec.class_names,
            adapter=spec.adapter(),
            num_classes=len(spec.class_names) if spec.class_names else None,
        )
    if not isinstance(source, str) or not source:
        raise TypeError(f"classifier source must be a non-empty string or an nn.Module, got {source!r}")
    if source.startswith(IN_MEMORY):
        raise ValueError(
            f"this was trained for a classifier passed in memory ({source}); pass that model again, "
            "e.g. ExplainerModule.load_from_checkpoint(path, classifier=model)"
        )
    path = Path(source)
    if path.is_dir():
        raise ValueError(
            f"classifier '{source}' is a folder; name a checkpoint, TorchScript or .pt2 file, or an "
            "architecture name with weights"
        )
    if path.is_file():
        kind = file_kind(path)
        if kind == "checkpoint" or (kind == "weights" and spec.weights is None and _is_lightning(path)):
            return _from_checkpoint(spec, path, num_classes, allow_factories)
        if kind == "torchscript":
            return _from_program(spec, path, num_classes, _load_torchscript(path), kind)
        if kind == "export":
            return _from_program(spec, path, num_classes, *_load_export(path))
        if kind == "weights":
            raise ValueError(
                f"'{source}' is a weights file: it holds no architecture. Name the architecture as the source and "
                f"this file as its weights, e.g. {{source: resnet50, weights: {source}}}"
            )
        raise ValueError(
            f"'{source}' is not a classifier file this library reads: a ClassifierModule .ckpt, a "
            "TorchScript file (torch.jit.save) or a torch.export program (torch.export.save, .pt2)"
        )
    if path.suffix in (".ckpt", ".ts", ".pt2", ".pt", ".pth", ".jit") or "/" in source:
        raise FileNotFoundError(f"classifier file not found: '{source}'")
    return _from_name(spec, num_classes)


def _is_lightning(path: Path) -> bool:

    try:
        ckpt = read_checkpoint(path, expect_lightning=False)
    except ValueError:
        return False
    return isinstance(ckpt, dict) and "hyper_parameters" in ckpt and "state_dict" in ckpt


def _from_checkpoint(spec: ClassifierSpec, path: Path, num_classes: int | None, allow: Iterable[str]) -> Any:

    if spec.weights is not None:
        raise ValueError(f"the checkpoint '{path}' holds its own weights; drop the classifier option weights")
    frozen = FrozenClassifier.from_checkpoint(path, num_classes=num_classes, allow_factories=allow)
    frozen.adapter = spec.adapter(frozen.adapter.activation)
    if spec.class_names is not None:
        frozen.class_names = list(spec.class_names)
    return frozen


def _load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # TorchScript raises RuntimeError subclasses of its own
        raise ValueError(f"'{path}' is not a readable TorchScript file: {str(err).splitlines()[0]}") from err


class ExportedClassifier(nn.Module):
    """A ``torch.export`` program as a module: eval mode fixed at export, a static batch size split into
    chunks, and the image size the program was exported for (``input_size``; ``None`` when dynamic)."""

    def __init__(self, module: nn.Module, batch: int | None, input_size: tuple[int, int] | None) -> None:
        super().__init__()
        self.program = module
        self.static_batch = batch
        self.input_size = input_size
        for sub in self.modules():  # the mode is the one fixed at export (their train() raises)
            sub.training = False

    def train(self, mode: bool = True) -> ExportedClassifier:
        """Exported programs fix their mode when exported; this keeps them as they are."""
        self.training = False
        return self

    def forward(self, images: Tensor) -> Any:
        if self.input_size is not None and tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(
                f"the exported classifier takes {self.input_size[0]}x{self.input_size[1]} images (fixed "
                f"when it was exported), got {images.shape[-2]}x{images.shape[-1]}: set the classifier "
                f"option input_size: [{self.input_size[0]}, {self.input_size[1]}] to resize, or export "
                "it with dynamic_shapes"
            )
        if self.static_batch is None or len(images) == self.static_batch:
            return self.program(images)
        if len(images) % self.static_batch:
            raise ValueError(
                f"the exported classifier takes batches of exactly {self.static_batch} (fixed when it "
                f"was exported), and {len(images)} images do not split into them: export it with "
                "dynamic_shapes={'x': {0: torch.export.Dim('batch')}}"
            )
        outs = [self.program(chunk) for chunk in images.split(self.static_batch)]
        return torch.cat(outs) if isinstance(outs[0], Tensor) else _cat_outputs(outs)


def _cat_outputs(outs: list[Any]) -> Any:
    first = outs[0]
    if isinstance(first, Mapping):
        return {k: torch.cat([o[k] for o in outs]) for k in first}
    return type(first)(torch.cat([o[i] for o in outs]) for i in range(len(first)))


def _load_export(path: Path) -> tuple[nn.Module, str]:
    try:
        program = torch.export.load(str(path))
    except Exception as err:  # the deserialiser raises many types on damaged or foreign files
        raise ValueError(f"'{path}' is not a readable torch.export program: {str(err).splitlines()[0]}") from err
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user = set(program.graph_signature.user_inputs)
    inputs = [n for n in placeholders if n.name in user]
    if len(inputs) != 1:
        raise ValueError(
            f"the exported classifier '{path}' takes {len(inputs)} inputs; an Explainer feeds it one image batch"
        )
    shape = inputs[0].meta["val"].shape
    static = [isinstance(s, int) for s in shape]
    batch = int(shape[0]) if static[0] else None
    size = (int(shape[2]), int(shape[3])) if len(shape) == 4 and static[2] and static[3] else None
    return ExportedClassifier(program.module(), batch, size), "export"


def _from_program(spec: ClassifierSpec, path: Path, num_classes: int | None, net: nn.Module, kind: str) -> Any:

    if spec.weights is not None:
        raise ValueError(f"the {kind} file '{path}' holds its own weights; drop the classifier option weights")
    return FrozenClassifier(
        net,
        reference=str(path),
        class_names=spec.class_names,
        adapter=spec.adapter(),
        num_classes=len(spec.class_names) if spec.class_names else None,
    )


def _from_name(spec: ClassifierSpec, num_classes: int | None) -> Any:

    name = str(spec.source)
    count = len(spec.class_names) if spec.class_names else num_classes
    if spec.weights is None:
        raise ValueError(
            f"the classifier '{name}' is an architecture: give its trained weights with the classifier option "
            f"weights (a .pt / .pth / .safetensors state dict, or a torchvision weights name), e.g. "
            f"{{source: {name}, weights: my_weights.safetensors}}"
        )
    path_weights = Path(spec.weights).suffix in WEIGHT_SUFFIXES
    if not path_weights:  # a torchvision weights name: its own head and categories
        raw, net, names = build_architecture(name, None, weights=spec.weights)
        class_names = spec.class_names or names
    else:
        if count is None:
            raise ValueError(
                f"the classifier '{name}' needs a class count: give class_names, or let the data module "
                "give num_classes"
            )
        raw, net, _ = build_architecture(name, count)
        load_weights(spec.weights, [raw, net], allow_partial=spec.allow_partial_weights, what=f"classifier '{name}'")
        class_names = spec.class_names
    return FrozenClassifier(
        net,
        reference=spec.reference,
        class_names=class_names,
        adapter=spec.adapter(),
        num_classes=len(class_names) if class_names else count,
    )


def classifier_hparams(given: Any, frozen: Any) -> str | dict[str, Any]:
    """What the hyper-parameters record of the classifier: its options as given (plain data), or, for a
    model passed in memory, its class name and adapter options (loading such a checkpoint needs the model
    again: ``load_from_checkpoint(path, classifier=model)``)."""
    if isinstance(given, str):
        return given

    if isinstance(given, FrozenClassifier):
        options = {k: v for k, v in given.adapter.to_config().items() if v is not None}
        return {"source": frozen.reference, **options}
    return ClassifierSpec.parse(given).to_hparams()


def check_class_names(classifier: Any, class_names: list[str] | None, num_classes: int) -> None:
    """The data module's classes against the classifier's: the count, and the names where both have names."""
    own = classifier.class_names
    if own is not None and class_names is not None and list(own) != list(class_names):
        raise ValueError(
            f"the classifier '{classifier.reference}' and the data module name their classes differently.\n"
            f"  classifier ({len(own)}): {list(own)}\n  data ({len(class_names)}): {list(class_names)}\n"
            "Give the data module the classifier's classes in its order, or set the classifier option class_names"
        )
    try:
        count = classifier.num_classes
    except AttributeError:  # known once it runs: checked on the first batch
        return
    if count != num_classes:
        raise ValueError(
            f"class-count mismatch: the classifier '{classifier.reference}' has {count} classes but "
            f"the data module has {num_classes}"
        )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a state-dict file (safetensors, or a ``torch.save`` file read weights-only; a checkpoint's
    ``state_dict`` entry is taken)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise ValueError(f"'{path}' is not a readable safetensors file: {err}") from err

    state = read_checkpoint(path, expect_lightning=False)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"'{path}' is not a state dict (a dict of tensors); save one with torch.save(model.state_dict(), path)"
        )
    return state


_PREFIXES = ("module.", "model.", "net.", "_orig_mod.")


def load_weights(
    path: str | Path, candidates: Sequence[nn.Module], allow_partial: bool = False, what: str = "the classifier"
) -> int:
    """Loads a state-dict file into the best-matching of ``candidates`` (views of the same network with other
    key names, e.g. a torchvision model and its features/head split). Common wrapper prefixes (``module.``,
    ``model.``, ``net.``) are stripped when that matches more.

    Returns:
        The number of tensors loaded.

    Raises:
        ValueError: no tensor matches; or only part of the network's tensors do and ``allow_partial`` is off
            (the message counts them and lists the first missing and mismatched names).
    """
    state = read_state_dict(path)
    best: tuple[int, int, nn.Module, dict[str, Tensor]] | None = None
    for module in candidates:
        own = module.state_dict()
        for prefix in ("", *_PREFIXES):
            if prefix and not all(k.startswith(prefix) for k in state):
                continue
            renamed = {k[len(prefix) :]: v for k, v in state.items()}
            matched = sum(1 for k, v in renamed.items() if k in own and own[k].shape == v.shape)
            if best is None or matched > best[0]:
                best = (matched, len(own), module, renamed)
    assert best is not None
    matched, total, module, renamed = best
    own = module.state_dict()
    missing = [k for k in own if k not in renamed]
    mismatched = [
        f"{k} {tuple(renamed[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in renamed and renamed[k].shape != own[k].shape
    ]
    unexpected = [k for k in renamed if k not in own]
    if matched == 0:
        raise ValueError(
            f"no tensor of {path} matches {what} by name and shape ({len(state)} tensors in the file, "
            f"{total} in the network; file keys start {list(state)[:3]}, network keys {list(own)[:3]}): "
            "is it the weights of this architecture?"
        )
    if matched < total and not allow_partial:
        details = "; ".join(
            part
            for part in (
                f"missing: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}" if missing else "",
                f"shape mismatches (file vs network): {', '.join(mismatched[:3])}" if mismatched else "",
                f"unexpected: {', '.join(unexpected[:4])}" if unexpected else "",
            )
            if part
        )
        raise ValueError(
            f"{path} fills only {matched} of the {total} tensors of {what} ({details}). Set the "
            "classifier option allow_partial_weights: true to load only those"
        )
    usable = {k: v for k, v in renamed.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(usable, strict=False)
    return matched


__all__ = [
    "ACTIVATIONS",
    "RETURNS",
    "ClassifierSpec",
    "ExportedClassifier",
    "OutputAdapter",
    "check_class_names",
    "classifier_hparams",
    "file_kind",
    "load_classifier",
    "load_weights",
    "read_state_dict",
]
