"""Mask networks: images to per-class mask logits ``[B, C, H, W]`` at the input resolution.

Networks are chosen by name (``build_mask_net(name, num_classes, **kwargs)``), so configs and exported
``config.json`` files describe them with plain values. Each network names its class head
(``head_prefix``), the last layer with one output channel per class, which fine-tuning re-initialises
for classes that the new class list does not share.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.classifiers.factory import build_classifier, load_backbone_weights
from explainer.nets.mask_output import PRIOR_KEY, attach_mask_output
from explainer.registry import Registry

MASK_NETS: Registry[Callable[..., nn.Module]] = Registry("mask network")
OUTPUT_OPTIONS = ("output", "temperature", "floor", "cells", "cell_prior")
"""``mask_net_kwargs`` that :func:`build_mask_net` applies to any network (:mod:`explainer.nets.mask_output`)."""


def register_mask_net(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: makes a mask network available to :func:`build_mask_net` under ``name`` (once)."""
    return MASK_NETS.register(name)


def available_mask_nets() -> list[str]:
    """The registered mask-network names."""
    return MASK_NETS.names()


def build_mask_net(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Builds a mask network.

    Args:
        name: ``unet`` (compact U-Net for CPU and small images), ``deeplabv3_resnet50`` (the paper's),
            or ``deeplabv3_mobilenet_v3_large`` / ``lraspp_mobilenet_v3_large`` (light torchvision nets).
        num_classes: one output channel per class (no background channel).
        **kwargs: the network's own options, and the output options every network takes
            (:mod:`explainer.nets.mask_output`): ``output`` (``sigmoid``, ``clipped`` or ``hard_concrete``),
            ``floor`` (of ``clipped``), ``temperature`` (of the hard-concrete sample in training), ``cells``
            (``n`` of a per-cell protocol's grids: a learned per-class cell prior) and ``cell_prior`` (its
            starting strength).

    Returns:
        A module mapping ``[B, 3, H, W]`` images to ``[B, C, H, W]`` logits, with a ``head_prefix``.
    """
    factory = MASK_NETS.get(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    options = {k: kwargs.pop(k) for k in OUTPUT_OPTIONS if k in kwargs}
    return attach_mask_output(factory(num_classes=num_classes, **kwargs), num_classes, **options)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@register_mask_net("unet")
class UNetMaskNet(nn.Module):
    """A compact U-Net: ``depth`` downsamplings, channels doubling from ``width``, a 1x1 class head.

    Args:
        num_classes: output channels (one per class).
        width: channels at full resolution.
        depth: number of 2x downsamplings (the input side must be divisible by ``2**depth``; other sizes
            are padded and cropped back).
        stem_stride: 2 runs the whole network at half resolution (a strided stem) and upsamples the logits
            bilinearly to the input size, about 4x cheaper; 1 keeps full resolution.
    """

    head_prefix = "head."

    def __init__(self, num_classes: int, width: int = 16, depth: int = 3, stem_stride: int = 1) -> None:
        super().__init__()
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        self.depth = depth
        self.stem_stride = stem_stride
        chans = [width * 2**i for i in range(depth + 1)]
        self.stem = _block(3, chans[0])
        if stem_stride == 2:
            self.stem[0] = nn.Conv2d(3, chans[0], 3, stride=2, padding=1, bias=False)
        self.down = nn.ModuleList([_block(chans[i], chans[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.fuse = nn.ModuleList([_block(2 * chans[i], chans[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        unit = 2 ** (self.depth + self.stem_stride - 1)
        pad_h, pad_w = (-height) % unit, (-width) % unit
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up, fuse in zip(self.up, self.fuse, strict=True):
            y = fuse(torch.cat([up(y), skips.pop()], dim=1))
        logits = self.head(y)
        if self.stem_stride == 2:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]


class _TorchvisionSegmentation(nn.Module):
    """A torchvision segmentation model whose ``out`` logits are the class masks (no auxiliary head)."""

    head_prefix = "model.classifier."

    def __init__(self, model: nn.Module, head_prefix: str) -> None:
        super().__init__()
        self.model = model
        self.head_prefix = head_prefix

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)["out"]  # torchvision upsamples bilinearly to the input size


def _torchvision_segmentation(
    builder_name: str, num_classes: int, weights_backbone: str | None, head_prefix: str, **kwargs: Any
) -> nn.Module:
    """Builds a torchvision segmentation model with a random head and the requested backbone weights.

    ``weights_backbone`` is ``None`` (random), a torchvision weights name (downloaded once) or a state-dict
    file of the torchvision backbone (``.pt`` / ``.pth`` / ``.safetensors``, loaded non-strictly).
    """
    import torchvision.models.segmentation as segmentation

    path = None
    if weights_backbone and Path(weights_backbone).suffix in (".pt", ".pth", ".safetensors"):
        weights_backbone, path = None, Path(weights_backbone)
    model = getattr(segmentation, builder_name)(
        weights=None, weights_backbone=weights_backbone, num_classes=num_classes, **kwargs
    )
    if path is not None:
        load_backbone_weights(model.backbone, path)
    return _TorchvisionSegmentation(model, head_prefix)


@register_mask_net("deeplabv3_resnet50")
def deeplabv3_resnet50(num_classes: int, weights_backbone: str | None = None) -> nn.Module:
    """The paper's mask network: DeepLabV3 on ResNet-50 (output stride 8, ASPP rates 12/24/36, 256 channels).

    Args:
        num_classes: output channels (one per class, no background).
        weights_backbone: ``None`` (random), a torchvision weights name (``IMAGENET1K_V1``, downloaded once)
            or a state-dict file of a torchvision ResNet-50 (loaded into the backbone).
    """
    return _torchvision_segmentation(
        "deeplabv3_resnet50", num_classes, weights_backbone, "model.classifier.4.", aux_loss=False
    )


@register_mask_net("deeplabv3_mobilenet_v3_large")
def deeplabv3_mobilenet(num_classes: int, weights_backbone: str | None = None) -> nn.Module:
    """DeepLabV3 on MobileNetV3-Large: a lighter network for CPU (torchvision)."""
    return _torchvision_segmentation(
        "deeplabv3_mobilenet_v3_large", num_classes, weights_backbone, "model.classifier.4.", aux_loss=False
    )


@register_mask_net("lraspp_mobilenet_v3_large")
def lraspp_mobilenet(num_classes: int, weights_backbone: str | None = None) -> nn.Module:
    """LR-ASPP on MobileNetV3-Large: the lightest torchvision segmentation network."""
    return _torchvision_segmentation("lraspp_mobilenet_v3_large", num_classes, weights_backbone, "model.classifier.")


def _source_class(name: str, old_index: dict[str, int]) -> str | None:
    """The old class a new class takes its head rows from: the same name, or for a per-cell class of the
    grid protocols (``cell<i>:<name>``) the class ``<name>``."""
    if name in old_index:
        return name
    cell, sep, base = name.partition(":")
    return base if sep and cell.startswith("cell") and base in old_index else None


def class_head_plan(old_classes: list[str], new_classes: list[str]) -> tuple[dict[str, str], list[str]]:
    """Which class-head rows a fine-tune keeps and which it initialises: ``({new class: old class it keeps
    the rows of}, [new classes that start fresh])``."""
    old_index = {name: i for i, name in enumerate(old_classes)}
    kept = {name: src for name in new_classes if (src := _source_class(name, old_index)) is not None}
    return kept, [name for name in new_classes if name not in kept]


def transfer_class_heads(
    new: nn.Module, state: dict[str, Tensor], old_classes: list[str], new_classes: list[str]
) -> dict[str, Tensor]:
    """Adapts a mask network's state dict to another class list.

    Every tensor outside the class head is kept. In the class head, the rows (output channels) of classes
    present in both lists are copied by name; a per-cell class ``cell<i>:<name>`` of the grid protocols
    starts from class ``<name>``; the rows of new classes keep ``new``'s fresh initialisation.

    Args:
        new: the freshly built network for ``new_classes`` (its initial weights fill the new rows).
        state: the state dict trained for ``old_classes``.
        old_classes: class names of ``state``.
        new_classes: class names of ``new``.

    Returns:
        A state dict that ``new.load_state_dict`` accepts.
    """
    prefix = getattr(new, "head_prefix", None)
    if prefix is None:
        raise ValueError(f"{type(new).__name__} does not name its class head (head_prefix)")
    target = new.state_dict()
    out = {k: v for k, v in state.items() if not k.startswith(prefix)}
    if PRIOR_KEY in target and (PRIOR_KEY not in state or state[PRIOR_KEY].shape != target[PRIOR_KEY].shape):
        out[PRIOR_KEY] = target[PRIOR_KEY]  # a cell prior the source lacks (or for other classes) starts fresh
    elif PRIOR_KEY not in target:
        out.pop(PRIOR_KEY, None)
    old_index = {name: i for i, name in enumerate(old_classes)}
    shared = [
        (j, old_index[source])
        for j, name in enumerate(new_classes)
        if (source := _source_class(name, old_index)) is not None
    ]
    for key, fresh in target.items():
        if not key.startswith(prefix):
            continue
        merged = fresh.clone()
        if key in state and shared and state[key].shape[1:] == fresh.shape[1:]:
            rows_new = torch.tensor([j for j, _ in shared])
            rows_old = torch.tensor([i for _, i in shared])
            if fresh.shape[0] == len(new_classes) and state[key].shape[0] == len(old_classes):
                merged[rows_new] = state[key][rows_old].to(merged.dtype)
            else:  # a head layer without a class dimension (none in the built-in networks)
                merged = state[key].clone()
        out[key] = merged
    return out


@register_mask_net("classifier_unet")
class ClassifierUNetMaskNet(nn.Module):
    """A U-Net whose encoder has the classifier's own feature architecture.

    The encoder is built from the classifier factory (``backbone``) and can start from the Explanandum's
    trained features (``ExplainerModule(encoder_from_classifier=True)`` copies them; the classifier itself
    stays frozen and separate). Where no pretrained backbone exists (the digit scenes), this gives the mask
    network the classifier's recognition ability from the start, the role ImageNet weights play in the paper.
    The decoder upsamples by 2 at each resolution change, fusing the encoder's last output at that
    resolution, and a 1x1 head gives the class logits, resized bilinearly to the input.

    Args:
        num_classes: output channels (one per class).
        backbone: a classifier-factory name whose ``features`` are a ``Sequential``.
        width: decoder channels.
        probe_size: image side used once to find the encoder's resolutions and channels.
    """

    head_prefix = "head."

    def __init__(self, num_classes: int, backbone: str = "digitnet", width: int = 32, probe_size: int = 64) -> None:
        super().__init__()
        features = build_classifier(backbone, num_classes).features
        if not isinstance(features, nn.Sequential):
            raise ValueError(
                f"classifier_unet needs a backbone whose features are an nn.Sequential; '{backbone}' has "
                f"{type(features).__name__}"
            )
        self.backbone = backbone
        self.encoder = features
        with torch.no_grad():
            was = self.encoder.training
            self.encoder.eval()
            shapes = [tuple(t.shape[1:]) for t in self._encode(torch.zeros(1, 3, probe_size, probe_size))]
            self.encoder.train(was)
        # for each resolution, the last layer output at it (skips), from fine to coarse
        self.skip_index = [i for i in range(len(shapes)) if i + 1 == len(shapes) or shapes[i + 1][1:] != shapes[i][1:]]
        channels = [shapes[i][0] for i in self.skip_index]
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in channels])
        self.fuse = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
                )
                for _ in channels[:-1]
            ]
        )
        self.head = nn.Conv2d(width, num_classes, 1)

    def _encode(self, x: Tensor) -> list[Tensor]:
        outs = []
        for layer in self.encoder:
            x = layer(x)
            outs.append(x)
        return outs

    def init_encoder_from(self, classifier_net: nn.Module) -> None:
        """Copies the classifier's trained feature weights into the encoder.

        The weights are matched by name and shape under the classifier's ``features.`` prefix, so a
        TorchScript or ``torch.export`` copy of the architecture works as well as the module itself.

        Raises:
            ValueError: the classifier's features do not fill the encoder (another architecture).
        """
        own = self.encoder.state_dict()
        state = classifier_net.state_dict()
        found = {}
        for prefix in ("features.", "net.features.", "program.features.", "base.features."):
            found = {
                k[len(prefix) :]: v
                for k, v in state.items()
                if k.startswith(prefix) and k[len(prefix) :] in own and own[k[len(prefix) :]].shape == v.shape
            }
            if len(found) == len(own):
                break
        if len(found) != len(own):
            raise ValueError(
                f"the classifier's features fill {len(found)} of the {len(own)} tensors of this mask network's "
                "encoder: it is another architecture. Set encoder_from_classifier: false (the encoder then starts "
                "from its own initialisation), or mask_net_kwargs.backbone to the classifier's architecture"
            )
        self.encoder.load_state_dict(found)

    def forward(self, x: Tensor) -> Tensor:
        outs = self._encode(x)
        return self._decode([outs[i] for i in self.skip_index], x.shape[-2:])

    def _decode(self, skips: list[Tensor], size: torch.Size) -> Tensor:
        """Head logits at ``size`` from the encoder's outputs at each resolution (fine to coarse)."""
        y = self.lateral[-1](skips[-1])
        for level in range(len(skips) - 2, -1, -1):
            lateral = self.lateral[level](skips[level])
            y = F.interpolate(y, size=lateral.shape[-2:], mode="bilinear", align_corners=False) + lateral
            y = self.fuse[level](y)
        return F.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)
