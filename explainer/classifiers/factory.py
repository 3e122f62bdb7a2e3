"""Classifier factory: torchvision names, timm names, the digit-scenes network, or a user callable.

A user callable is named ``package.module:factory``; when the name comes from a loaded file it is imported
only if the user allowed it (:mod:`explainer.trust`).

Every classifier is returned as a :class:`ClassifierNet` with three parts, ``features`` (image to a
feature map), ``pool`` and ``head`` (pooled features to logits). Attribution methods find their default
layers from this split (Grad-CAM on the last feature block) and the part-prototype heads need it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from explainer.registry import Registry
from explainer.trust import check_trusted, register_backbone, registered_factory


class ClassifierNet(nn.Module):
    """A classifier split into ``features -> pool -> head``.

    Args:
        features: maps ``[B, 3, H, W]`` images to ``[B, D, h, w]`` feature maps; ``None`` for an opaque
            user model, which is then the ``head`` and takes images directly.
        head: maps pooled (flattened) features to ``[B, C]`` logits.
        pool: pooling between the two (global average by default).
        name: the factory name it was built from.
        flatten: flatten the pooled features before the head (False for heads that pool themselves).
    """

    def __init__(
        self,
        features: nn.Module | None,
        head: nn.Module,
        pool: nn.Module | None = None,
        name: str = "",
        flatten: bool = True,
    ) -> None:
        super().__init__()
        self.features = features
        self.pool = pool if pool is not None else nn.AdaptiveAvgPool2d(1)
        self.head = head
        self.name = name
        self.flatten = flatten

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map before pooling (``[B, D, h, w]``)."""
        if self.features is None:
            raise AttributeError(f"classifier '{self.name}' is opaque: it has no separate feature extractor")
        return self.features(x)

    def forward_head(self, feats: Tensor) -> Tensor:
        """Logits from a feature map."""
        feats = self.pool(feats)
        return self.head(torch.flatten(feats, 1) if self.flatten else feats)

    def forward(self, x: Tensor) -> Tensor:
        if self.features is None:
            return self.head(x)
        return self.forward_head(self.features(x))

    @property
    def num_classes(self) -> int:
        """The number of outputs of the last linear layer."""
        linears = [m for m in self.head.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise AttributeError(f"cannot tell the class count of classifier '{self.name}'")
        return linears[-1].out_features


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def digitnet(num_classes: int, width: int = 32) -> ClassifierNet:
    """The small CNN of the digit-scenes quickstart: 6 conv-BN-ReLU layers, stride 8, ReLU features.

    At 64 px it gives an 8x8 map of ``4 * width`` non-negative features, globally average-pooled into a
    linear head (the form the part-prototype heads need).

    Args:
        num_classes: outputs of the linear head.
        width: channels of the first stage (doubled at each of the two later downsamplings).
    """
    w = width
    features = nn.Sequential(
        _conv_bn_relu(3, w, stride=2),
        _conv_bn_relu(w, w),
        _conv_bn_relu(w, 2 * w, stride=2),
        _conv_bn_relu(2 * w, 2 * w),
        _conv_bn_relu(2 * w, 4 * w, stride=2),
        _conv_bn_relu(4 * w, 4 * w),
    )
    return ClassifierNet(features, nn.Linear(4 * w, num_classes), name="digitnet")


def digitnet_local(num_classes: int, width: int = 32) -> ClassifierNet:
    """A digit-scenes CNN with *local* features: stride 4 and a 19 px receptive field (BagNet-style).

    Four 3x3 conv-BN-ReLU layers (two with stride 2) and two 1x1 layers, so each location of the 16x16 map
    (at 64 px) sees a 19 px patch: a part of a digit (digit strokes are 18-30 px tall on the quickstart
    scenes, 36-46 px on one-digit part scenes), not the whole digit as in :func:`digitnet` (43 px). Its
    part-level explanations (part-prototypes, ``benchmarks/prototypes.py``) can therefore be told apart by
    where they fire. Same head form: ReLU features, global average pooling, one linear layer.

    Args:
        num_classes: outputs of the linear head.
        width: channels of the first stage (doubled at each downsampling, and again by the 1x1 layers).
    """
    w = width
    features = nn.Sequential(
        _conv_bn_relu(3, w, stride=2),
        _conv_bn_relu(w, w),
        _conv_bn_relu(w, 2 * w, stride=2),
        _conv_bn_relu(2 * w, 2 * w),
        _conv_bn_relu(2 * w, 4 * w, kernel=1),
        _conv_bn_relu(4 * w, 4 * w, kernel=1),
    )
    return ClassifierNet(features, nn.Linear(4 * w, num_classes), name="digitnet_local")


def _replace_last_linear(seq: nn.Sequential, num_classes: int | None) -> nn.Sequential:
    if num_classes is None:  # keep the model's own head
        return seq
    layers = list(seq.children())
    idx = max(i for i, m in enumerate(layers) if isinstance(m, nn.Linear))
    layers[idx] = nn.Linear(layers[idx].in_features, num_classes)
    return nn.Sequential(*layers)


def _linear(layer: nn.Linear, num_classes: int | None) -> nn.Linear:
    return layer if num_classes is None else nn.Linear(layer.in_features, num_classes)


def _torchvision_model(name: str, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model``, with a clear error when pretrained weights are neither in torch's
    cache nor downloadable (a machine without a network)."""
    import torchvision

    try:
        return torchvision.models.get_model(name, **kwargs)
    except OSError as err:  # urllib's URLError and socket errors are OSErrors
        weights = kwargs.get("weights")
        url = getattr(weights, "url", None)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / (url.rsplit("/", 1)[-1] if url else "<file>")
        raise RuntimeError(
            f"the torchvision weights {name} {getattr(weights, 'name', weights)} are not in torch's cache ({cached}) "
            f"and could not be downloaded ({err}). Copy the file there from a machine with a network ({url}), or "
            f"save the model's state dict and name it as the weights: {{source: {name}, weights: my_weights.pth}}"
        ) from err


def _from_torchvision(
    name: str, num_classes: int | None, weights: str | None, model: nn.Module | None = None
) -> ClassifierNet:
    """Splits a torchvision model into features / pool / head: a fresh ``num_classes`` head, or (with
    ``num_classes=None``) the model's own head. ``model`` is the model to split (built here when None)."""
    if model is None:
        model = _torchvision_model(name, weights=weights)
    if hasattr(model, "fc") and hasattr(model, "layer4"):  # resnet, resnext, wide_resnet
        features = nn.Sequential(
            model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4
        )
        return ClassifierNet(features, _linear(model.fc, num_classes), model.avgpool, name)
    if name.startswith(("vgg", "alexnet")):  # the paper's head: 7x7 pooled features, 25088-4096-4096-C
        return ClassifierNet(model.features, _replace_last_linear(model.classifier, num_classes), model.avgpool, name)
    if name.startswith("densenet"):
        features = nn.Sequential(model.features, nn.ReLU(inplace=False))
        return ClassifierNet(features, _linear(model.classifier, num_classes), None, name)
    if name.startswith(("mobilenet", "efficientnet", "convnext", "regnet", "mnasnet")):
        if hasattr(model, "trunk_output"):  # regnet
            features = nn.Sequential(model.stem, model.trunk_output)
            return ClassifierNet(features, _linear(model.fc, num_classes), model.avgpool, name)
        pool = getattr(model, "avgpool", None)
        head = model.classifier if isinstance(model.classifier, nn.Sequential) else nn.Sequential(model.classifier)
        if name.startswith("mnasnet"):
            model.features = nn.Sequential(model.layers)
            pool = nn.AdaptiveAvgPool2d(1)
        return ClassifierNet(model.features, _replace_last_linear(head, num_classes), pool, name)
    raise ValueError(
        f"torchvision model '{name}' has no adapter here; supported families: resnet/resnext/wide_resnet, "
        "vgg, alexnet, densenet, mobilenet, efficientnet, convnext, regnet, mnasnet. For another model pass "
        "a callable as 'package.module:factory'."
    )


class _TimmFeatures(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)


class _TimmHead(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_head(x)


def _timm_model(name: str, num_classes: int) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _split_timm(model: nn.Module, name: str) -> ClassifierNet:
    # timm pools inside forward_head
    return ClassifierNet(_TimmFeatures(model), _TimmHead(model), nn.Identity(), name=f"timm/{name}", flatten=False)


def _call_factory(spec: str, num_classes: int) -> nn.Module:
    registered = registered_factory(spec)
    if registered is not None:
        factory: Callable[..., nn.Module] = registered
    else:
        check_trusted(spec)
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import classifier factory '{spec}': {err}") from err
    model = factory(num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise TypeError(f"classifier factory '{spec}' returned {type(model).__name__}, not an nn.Module")
    return model


def _split_user_model(model: nn.Module, spec: str) -> ClassifierNet:
    if isinstance(model, ClassifierNet):
        return model
    if hasattr(model, "features") and hasattr(model, "head"):
        return ClassifierNet(model.features, model.head, getattr(model, "pool", None), name=spec)
    return ClassifierNet(None, model, None, name=spec)


def _is_torchvision(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


# -- where an architecture name comes from -------------------------------------------------------------------
class ArchitectureSource:
    """One kind of architecture name. The sources are tried in the order of registration; the first whose
    :meth:`matches` accepts a name builds it."""

    description = ""

    def matches(self, name: str) -> bool:
        """Whether this source builds ``name``."""
        raise NotImplementedError

    def classifier(self, name: str, num_classes: int, weights: str | None) -> ClassifierNet:
        """The split network with a fresh ``num_classes`` head; ``weights`` is a torchvision weights name."""
        if weights is not None:
            raise ValueError(
                f"a weights name ({weights!r}) is a torchvision name and '{name}' is not a torchvision "
                "model; give a .pt / .pth / .safetensors file instead"
            )
        return self.architecture(name, num_classes)[1]

    def architecture(self, name: str, num_classes: int) -> tuple[nn.Module, ClassifierNet]:
        """The model as its own code builds it (a state dict of it matches its keys) and its split."""
        raise NotImplementedError


ARCHITECTURES: Registry[ArchitectureSource] = Registry("classifier source", plural="sources", sort=False)


class RegisteredOrCallable(ArchitectureSource):
    description = "digitnet, digitnet_local or a name given to register_backbone, or a package.module:factory"

    def matches(self, name: str) -> bool:
        return ":" in name or registered_factory(name) is not None

    def architecture(self, name: str, num_classes: int) -> tuple[nn.Module, ClassifierNet]:
        model = _call_factory(name, num_classes)
        return model, _split_user_model(model, name)


class TimmPrefixed(ArchitectureSource):
    description = "timm/<name> (timm installed)"

    def matches(self, name: str) -> bool:
        return name.startswith("timm/")

    def architecture(self, name: str, num_classes: int) -> tuple[nn.Module, ClassifierNet]:
        model = _timm_model(name[5:], num_classes)
        return model, _split_timm(model, name[5:])


class Torchvision(ArchitectureSource):
    description = "a torchvision model (torchvision.models.list_models())"

    def matches(self, name: str) -> bool:
        return _is_torchvision(name)

    def classifier(self, name: str, num_classes: int, weights: str | None) -> ClassifierNet:
        return _from_torchvision(name, num_classes, weights)

    def architecture(self, name: str, num_classes: int) -> tuple[nn.Module, ClassifierNet]:
        import torchvision

        model = torchvision.models.get_model(name, num_classes=num_classes)
        return model, _from_torchvision(name, None, None, model)


class Timm(TimmPrefixed):
    description = "a bare timm name (timm installed)"

    def matches(self, name: str) -> bool:
        return importlib.util.find_spec("timm") is not None

    def architecture(self, name: str, num_classes: int) -> tuple[nn.Module, ClassifierNet]:
        return super().architecture(f"timm/{name}", num_classes)


for _source in (RegisteredOrCallable(), TimmPrefixed(), Torchvision(), Timm()):
    ARCHITECTURES.add(type(_source).__name__, _source)
register_backbone("digitnet", digitnet)
register_backbone("digitnet_local", digitnet_local)


def architecture_source(name: str) -> ArchitectureSource:
    """The first source of :data:`ARCHITECTURES` that builds ``name``, or an error listing what names can be."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a classifier name must be a non-empty string, got {name!r}")
    for source in ARCHITECTURES:
        if ARCHITECTURES.get(source).matches(name):
            return ARCHITECTURES.get(source)
    kinds = "; ".join(ARCHITECTURES.get(s).description for s in ARCHITECTURES)
    raise ValueError(f"unknown classifier architecture '{name}'; a name is one of: {kinds} (timm is not installed)")


def build_architecture(
    name: str, num_classes: int | None, weights: str | None = None
) -> tuple[nn.Module, ClassifierNet, list[str] | None]:
    """An architecture with its own ``num_classes`` head, to load trained weights into.

    Args:
        name: as for :func:`build_classifier`.
        num_classes: the head size; ``None`` only with a torchvision ``weights`` name (its own head).
        weights: a torchvision weights name (``IMAGENET1K_V1``; downloaded once), or ``None``.

    Returns:
        ``(model, split, class_names)``: the model as its own code builds it (a user's ``state_dict`` file
        matches its keys), the same modules as a :class:`ClassifierNet`, and the class names the weights
        carry (torchvision's categories) or ``None``.
    """
    if weights is not None:
        if not _is_torchvision(name):
            raise ValueError(
                f"a weights name ({weights!r}) is a torchvision name and '{name}' is not a torchvision "
                "model; give a .pt / .pth / .safetensors file instead"
            )
        import torchvision

        enum = torchvision.models.get_model_weights(name)
        try:
            resolved = enum[weights] if weights in enum.__members__ else enum.verify(weights)
        except (KeyError, ValueError) as err:
            raise ValueError(
                f"unknown weights {weights!r} for {name}; choose one of {', '.join(enum.__members__)}"
            ) from err
        model = _torchvision_model(name, weights=resolved)
        names = resolved.meta.get("categories")
        return model, _from_torchvision(name, None, None, model), list(names) if names else None
    if num_classes is None or num_classes < 1:
        raise ValueError(f"the architecture '{name}' needs a class count >= 1, got {num_classes}")
    model, split = architecture_source(name).architecture(name, num_classes)
    return model, split, None


def build_classifier(name: str, num_classes: int, weights: str | None = None) -> ClassifierNet:
    """Builds a classifier with a fresh ``num_classes`` head.

    Args:
        name: ``digitnet`` or ``digitnet_local``; a torchvision model name (``resnet18``, ``resnet50``,
            ``vgg16``, ...); a timm name (``timm/<name>``, or a bare name torchvision does not know, when timm
            is installed); a name given to :func:`register_backbone`; or a user callable
            ``package.module:factory`` that takes ``num_classes`` and returns an nn.Module (inside
            :func:`loading_from`, only when allowed: see the module docstring). The sources are tried in the
            order of :data:`ARCHITECTURES`.
        num_classes: outputs of the head.
        weights: backbone weights: a torchvision weights name (``IMAGENET1K_V1``, needs the internet once)
            or the path of a state dict (``.pt`` / ``.pth`` / ``.safetensors``) loaded non-strictly, so a
            backbone-only file fits.

    Returns:
        The classifier.
    """
    source = architecture_source(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    path_weights = weights is not None and Path(weights).suffix in (".pt", ".pth", ".safetensors", ".bin")
    net = source.classifier(name, num_classes, None if path_weights else weights)
    if path_weights:
        load_backbone_weights(net, weights)
    return net


def load_backbone_weights(net: nn.Module, path: str | Path) -> None:
    """Loads a state dict file into ``net`` non-strictly, refusing one that matches no parameter."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"no tensor of {path} matches the classifier's parameters by name and shape")
    net.load_state_dict(usable, strict=False)
