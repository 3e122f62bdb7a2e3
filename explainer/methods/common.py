"""Shared pieces of the attribution methods: (image, class) pairs, class scores, layers, Gaussian blur."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from explainer.classifiers.factory import ClassifierNet
from explainer.ops import check_activation
from explainer.protocols.wrappers import ProtocolNet


@contextlib.contextmanager
def eval_mode(module: nn.Module | None) -> Iterator[None]:
    """Puts ``module`` in eval mode for the duration and restores every submodule's flag afterwards.

    An explanation is of the classifier's inference behaviour: dropout off, BatchNorm statistics fixed.
    A :class:`~explainer.classifiers.FrozenClassifier` is in eval mode anyway.
    """
    if module is None:
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    for m, _ in flags:
        m.training = False
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def class_log_odds(logits: Tensor, targets: Tensor, activation: str = "sigmoid") -> Tensor:
    """Log-odds of one class per row: the score that FIDO, BBMP and extremal perturbations optimise.

    * ``sigmoid`` (multi-label): every class is an independent Bernoulli with ``p_c = sigmoid(z_c)``, so
      ``log(p_c / (1 - p_c)) = z_c``: the log-odds is the logit itself.
    * ``softmax`` (single-label): ``log p_c - log(1 - p_c) = log p_c - logsumexp_{c' != c} log p_c'
      = z_c - logsumexp_{c' != c} z_c'`` (computed from the logits, which is numerically stable).

    Args:
        logits: ``[N, C]`` classifier logits.
        targets: ``[N]`` class index per row.
        activation: ``sigmoid`` or ``softmax``.

    Returns:
        ``[N]`` log-odds.
    """
    check_activation(activation)
    z = logits.gather(1, targets.view(-1, 1)).squeeze(1)
    if activation == "sigmoid":
        return z
    if logits.shape[1] < 2:
        raise ValueError("softmax log-odds need at least two classes")
    others = logits.scatter(1, targets.view(-1, 1), float("-inf"))
    return z - torch.logsumexp(others, dim=1)


def valid_pairs(classes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The non-padding (image, class) pairs of ``classes`` ``[B, K]``.

    Returns:
        ``(image_index[P], slot_index[P], class_index[P])`` for the ``P`` entries that are not ``-1``.
    """
    b, k = torch.nonzero(classes >= 0, as_tuple=True)
    return b, k, classes[b, k].long()


def scatter_pairs(values: Tensor, image_index: Tensor, slot_index: Tensor, shape: tuple[int, int]) -> Tensor:
    """Places per-pair maps ``[P, H, W]`` into zero maps ``[B, K, H, W]`` (padding stays zero)."""
    out = values.new_zeros(*shape, *values.shape[-2:])
    out[image_index, slot_index] = values
    return out


def chunk_slices(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` items covering ``range(total)``."""
    size = max(1, int(size))
    for start in range(0, total, size):
        yield slice(start, min(total, start + size))


def named_layers(module: nn.Module) -> list[str]:
    """Dotted names of every submodule of ``module`` (the valid ``layer`` options)."""
    return [name for name, _ in module.named_modules() if name]


def resolve_layer(module: nn.Module, name: str) -> nn.Module:
    """Finds a submodule by dotted name (``net.features.5``; indices of Sequentials are names too).

    Names are tried on ``module`` and, for a wrapper such as
    :class:`~explainer.classifiers.FrozenClassifier`, on its ``net``, so ``features.5`` works as well.

    Raises:
        ValueError: listing every valid name when ``name`` matches none.
    """
    layers = dict(module.named_modules())
    if name in layers and name:
        return layers[name]
    inner = getattr(module, "net", None)
    if isinstance(inner, nn.Module) and name and name in dict(inner.named_modules()):
        return dict(inner.named_modules())[name]
    raise ValueError(
        f"unknown layer '{name}' of {type(module).__name__}; valid layer names: {', '.join(named_layers(module))}"
    )


def scaled(value: float, size: int, reference: int = 224) -> float:
    """``value`` given in pixels of a ``reference``-pixel image, rescaled to an image of ``size`` pixels."""
    return value * size / reference


def default_cam_layer(classifier: nn.Module) -> str:
    """The default Grad-CAM layer name of ``classifier`` (see the module docstring).

    The last child of ``features``; when that child is a stage of blocks (ResNet ``layer4``), its last
    block. Works on a :class:`ClassifierNet` or a wrapper with a ``net`` attribute holding one.

    Raises:
        ValueError: for a model without a ``features`` part, listing the layer names to choose from.
    """
    wrapped = getattr(classifier, "net", None)
    if isinstance(getattr(wrapped, "default_layer", None), str):  # a protocol wrapper: its grid feature map
        return f"net.{wrapped.default_layer}"
    prefix, net = "", classifier
    if not isinstance(net, ClassifierNet) and isinstance(getattr(classifier, "net", None), ClassifierNet):
        prefix, net = "net.", classifier.net
    if not isinstance(net, ClassifierNet) or net.features is None:
        raise ValueError(
            f"cannot choose a default Grad-CAM layer for {type(classifier).__name__} (no 'features' part); "
            f"pass layer=<name>, one of: {', '.join(named_layers(classifier))}"
        )
    feats = net.features
    name = f"{prefix}features"
    if isinstance(feats, nn.Sequential) and len(feats) > 0:
        name += f".{len(feats) - 1}"
        last = feats[-1]
        if isinstance(last, nn.Sequential) and len(last) > 0 and len(list(last[-1].children())) > 0:
            name += f".{len(last) - 1}"
    return name


def layer_by_role(classifier: nn.Module, layer: str | None) -> str | None:
    """Resolves a layer spec for layer attribution (ML-Att): ``input`` (or ``None``) gives ``None`` (the
    image itself); ``final`` the default Grad-CAM layer (:func:`default_cam_layer`); ``middle`` the block
    halfway through the classifier's ``features``; anything else is taken as a dotted module name.

    Raises:
        ValueError: ``middle`` on a model without a ``features`` sequence, or under a protocol whose
            ``layers`` leave it out (DiFull: the backbone sees the cells one by one, so its inner layers hold
            no grid-shaped map).
    """
    if layer is None or layer == "input":
        return None
    if layer == "final":
        return default_cam_layer(classifier)
    if layer != "middle":
        return layer
    wrapped = getattr(classifier, "net", None)
    if isinstance(wrapped, ProtocolNet):
        wrapped.spec.check_layer(layer)
    prefix, net = ("net.base.", wrapped.base) if hasattr(wrapped, "base") else ("", classifier)
    if not isinstance(net, ClassifierNet) and isinstance(getattr(net, "net", None), ClassifierNet):
        prefix, net = "net.", net.net
    feats = getattr(net, "features", None)
    if not isinstance(feats, nn.Sequential) or len(feats) < 2:
        raise ValueError(
            f"cannot choose a middle layer for {type(classifier).__name__}; pass a layer name, one "
            f"of: {', '.join(named_layers(classifier))}"
        )
    return f"{prefix}features.{len(feats) // 2 - 1}"
