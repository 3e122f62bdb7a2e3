"""Exporting a trained Explainer and loading it anywhere.

An export is a folder::

    model.safetensors   the mask network's weights (nothing else: no classifier, no optimiser)
    config.json         class names, normalisation, input size, network spec, classifier reference + hash,
                        fill and target settings, library version
    examples.png        example masks (when example images were given)
    model.ts            optional TorchScript of the mask network

``load(folder)`` rebuilds it; ``explain(images, classes=None)`` gives per-class masks in one forward pass.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import explainer
from explainer.atomic import check_replaceable, replacing_folder
from explainer.checkpoint import read_checkpoint
from explainer.nets.masknets import build_mask_net
from explainer.ops import IMAGENET_MEAN, IMAGENET_STD, gather_classes
from explainer.precision import autocast_dtype
from explainer.trust import loading_from
from explainer.viz import save_figure

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "explainer-export/1"


EXPORT_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, "examples.png", "model.ts"})
"""The files an Explainer export holds; a folder with anything else is never replaced."""


def check_export_target(folder: Path, overwrite: bool) -> None:
    """Refuses to export into ``folder`` when that would replace an export (without ``overwrite``) or files
    that are not an export (see :func:`~explainer.atomic.check_replaceable`)."""
    check_replaceable(folder, CONFIG_NAME, FORMAT, EXPORT_FILES, overwrite, "Explainer export")


def check_finite(state: dict[str, Tensor], what: str) -> None:
    """Refuses a state dict with non-finite floating-point tensors, naming them."""
    bad = [
        f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()})"
        for k, v in state.items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise ValueError(
            f"{what} has non-finite values in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}: "
            "training diverged (lower the learning rate, or export an earlier checkpoint); nothing "
            "was written"
        )


def _factory_names(config: dict[str, Any]) -> list[str]:
    """The ``package.module:factory`` backbone this export's own module was built with (typed by its user)."""
    backbone = config["mask_net"]["kwargs"].get("backbone")
    return [backbone] if isinstance(backbone, str) and ":" in backbone else []


def export_explainer(
    module: Any,
    folder: str | Path,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    input_size: tuple[int, int] | None = None,
    example_images: Tensor | None = None,
    torchscript: bool = False,
    overwrite: bool = False,
) -> Path:
    """Writes a learned explainer (:class:`~explainer.modules.learned.LearnedExplainerModule`: the Explainer,
    real-time saliency, FastSHAP) to ``folder``.

    Args:
        module: the trained module.
        folder: the export folder (created).
        mean: normalisation mean of the images the Explainer expects (default: the module's).
        std: normalisation standard deviation.
        input_size: ``(H, W)`` the Explainer was trained at.
        example_images: a few normalised images for ``examples.png``.
        torchscript: also write ``model.ts`` (a traced TorchScript module; needs ``example_images`` or
            ``input_size``).
        overwrite: replace an existing export; without it an existing ``config.json`` is an error. The
            export is written to a new folder beside ``folder`` and renamed into place, so it replaces an
            earlier export whole, and a failure leaves the earlier one untouched.

    Returns:
        The folder.
    """
    folder = Path(folder)
    check_export_target(folder, overwrite)
    hp = module.hparams
    net = module.mask_net
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    check_finite(state, "the mask network")
    config = {
        "format": FORMAT,
        "library_version": explainer.__version__,
        "class_names": list(module.class_names),
        "num_classes": int(hp.num_classes),
        "mask_net": {"name": hp.mask_net, "kwargs": dict(hp.mask_net_kwargs or {})},
        "normalization": {
            "mean": list(mean if mean is not None else module.norm_mean.flatten().tolist()),
            "std": list(std if std is not None else module.norm_std.flatten().tolist()),
        },
        "input_size": list(input_size) if input_size is not None else None,
        "classifier": {
            "reference": module.classifier.reference,
            "spec": hp.classifier,
            "sha256": module.classifier.content_hash,
            "adapter": module.classifier.adapter.to_config(),
        },
        "targets": hp.targets,
        "fill": hp.fill,
        "kind": getattr(module, "kind", "explainer") or "explainer",
        "map_output": getattr(module, "map_output", "mask_logits"),
        **(module.export_settings() if hasattr(module, "export_settings") else {}),
    }
    with replacing_folder(folder) as staging:  # every file in a fresh folder, renamed into place at the end
        save_file(state, str(staging / WEIGHTS_NAME), metadata={"format": FORMAT})
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        loaded = load(staging, allow_factories=_factory_names(config))
        if example_images is not None:
            save_example_masks(loaded, example_images, staging / "examples.png")
        if torchscript:
            size = tuple(example_images.shape[-2:]) if example_images is not None else tuple(input_size or (224, 224))
            sample = torch.zeros(1, 3, *size)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice and trace warnings on shape checks
                traced = torch.jit.trace(loaded.net.eval(), sample)
            traced.save(str(staging / "model.ts"))
    return folder


class LoadedExplainer(nn.Module):
    """An exported learned explainer: its network and its config.

    ``config["map_output"]`` says what the network gives: ``mask_logits`` (the Explainer, real-time saliency:
    ``explain()`` returns masks in [0, 1]) or ``values`` (FastSHAP: signed attributions, returned as they are).

    Args:
        net: the mask network.
        config: the export's ``config.json`` content.
    """

    def __init__(self, net: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.net = net.eval()
        self.config = config
        self.class_names: list[str] = list(config["class_names"])
        self.mean = tuple(config["normalization"]["mean"])
        self.std = tuple(config["normalization"]["std"])
        self.kind: str = config.get("kind", "explainer")
        self.map_output: str = config.get("map_output", "mask_logits")
        if self.map_output not in ("mask_logits", "values"):
            raise ValueError(
                f"unknown map_output {self.map_output!r} in the export's config; expected mask_logits or values"
            )

    def maps(self, images: Tensor) -> Tensor:
        """Every class's explanation ``[B, C, H, W]`` of normalised images (masks in [0, 1], or values)."""
        out = self.net(images)
        return torch.sigmoid(out) if self.map_output == "mask_logits" else out

    def forward(self, images: Tensor) -> Tensor:
        """Mask logits ``[B, C, H, W]`` of normalised images."""
        return self.net(images)

    def _check_images(self, images: Any) -> Tensor:
        return _check_images_of(self, images)

    def _class_indices(self, classes: Any) -> list[int]:
        out = []
        for c in classes:
            if isinstance(c, str):
                if c not in self.class_names:
                    raise ValueError(f"unknown class {c!r}; this Explainer knows {self.class_names}")
                out.append(self.class_names.index(c))
            elif isinstance(c, int) and 0 <= c < len(self.class_names):
                out.append(c)
            else:
                raise ValueError(
                    f"class {c!r} is neither a class name nor an index in [0, "
                    f"{len(self.class_names) - 1}]; the classes are {self.class_names}"
                )
        return out

    @torch.no_grad()
    def explain(
        self,
        images: Tensor,
        classes: Tensor | list[int] | list[str] | None = None,
        precision: str | None = None,
    ) -> Tensor:
        """Per-class masks in ``[0, 1]`` (or values, for ``map_output: values``) from one forward pass.

        Args:
            images: ``[B, 3, H, W]`` normalised images (see ``mean`` / ``std``), or one ``[3, H, W]`` image.
            classes: ``None`` for every class (``[B, C, H, W]``); a list of class indices or names shared by
                all images (``[B, K, H, W]``); or a ``[B, K]`` index tensor (``-1`` gives a zero mask).
            precision: ``None`` (float32), ``bf16-mixed`` or ``16-mixed``: the network runs under
                ``torch.autocast`` on the images' device with that dtype (``auto-mixed``: bf16 on GPUs that
                have it, fp16 on other GPUs, float32 on CPU, as in training). The maps are returned as float32.

        Returns:
            The masks.

        Raises:
            TypeError: ``images`` is not a floating-point tensor (e.g. ``uint8`` pixels).
            ValueError: a wrong shape, non-finite pixels (NaN or inf would spread through the convolutions
                into the masks, so they are refused rather than returned), or an unknown class.
        """
        images = self._check_images(images)
        dtype = autocast_dtype(precision, images.device)
        was_training = self.net.training
        self.net.eval()
        with torch.autocast(images.device.type, dtype=dtype) if dtype is not None else nullcontext():
            masks = self.maps(images)
        masks = masks.float()
        self.net.train(was_training)
        if classes is None:
            return masks
        if not isinstance(classes, Tensor):
            classes = torch.tensor(self._class_indices(classes), device=masks.device).expand(masks.shape[0], -1)
        elif classes.ndim != 2 or classes.shape[0] != masks.shape[0] or classes.is_floating_point():
            raise ValueError(
                f"classes as a tensor must be [B, K] integer indices with B = {masks.shape[0]}, got "
                f"{classes.dtype} of shape {tuple(classes.shape)}; or pass a list of names or indices"
            )
        elif bool(((classes < -1) | (classes >= len(self.class_names))).any()):
            raise ValueError(f"class indices must lie in [-1, {len(self.class_names) - 1}]")
        return gather_classes(masks, classes.to(masks.device).long())


def _check_images_of(model: LoadedExplainer, images: Any) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"explain() takes a tensor of images, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(
            f"explain() takes normalised floating-point images, got {images.dtype}: convert pixels with "
            f"images.float() / 255, then normalise with mean {model.mean} and std {model.std}"
        )
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"explain() takes [B, 3, H, W] or [3, H, W] images, got shape {tuple(images.shape)}")
    finite = torch.isfinite(images).flatten(1).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(
            f"image(s) {bad[:10]} of the batch hold NaN or inf pixels; their masks would be NaN. "
            "Replace those pixels (e.g. torch.nan_to_num) or drop the images"
        )
    return images


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"'{folder}' is not an Explainer export: no {CONFIG_NAME} (export with "
            "explainer.export.export_explainer or a training run with the ExportExplainer callback)"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the export is damaged: export it again") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path} has format {found!r}; this library reads {FORMAT!r}")
    return config


def _read_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the export is incomplete, export it again")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}); the export is damaged: export it again"
        ) from err


def load(
    path: str | Path, map_location: str | torch.device = "cpu", *, allow_factories: Iterable[str] = ()
) -> LoadedExplainer:
    """Loads an exported Explainer folder (or an ``ExplainerModule`` checkpoint file).

    Loading reads data only. A mask network built on a ``package.module:factory`` classifier (the
    ``classifier_unet`` backbone) is refused unless that name is registered, allowed here or in
    ``EXPLAINER_ALLOW_FACTORIES`` (see :mod:`explainer.classifiers.factory`).

    Args:
        path: the export folder, or a ``.ckpt`` of an ``ExplainerModule`` (no classifier needed).
        map_location: the device to load onto.
        allow_factories: ``package.module:factory`` names the files may use.

    Returns:
        The explainer, in eval mode.
    """
    path = Path(path)
    if path.is_dir():
        config = _read_config(path)
        with loading_from(f"the export {path / CONFIG_NAME}", allow_factories):
            net = build_mask_net(config["mask_net"]["name"], config["num_classes"], **config["mask_net"]["kwargs"])
        net.load_state_dict(_read_weights(path / WEIGHTS_NAME))
        return LoadedExplainer(net, config).to(map_location)
    state, class_names, spec, hp = _checkpoint_mask_net(path)
    with loading_from(f"the checkpoint {path}", allow_factories):
        net = build_mask_net(spec["name"], len(class_names), **spec["kwargs"])
    net.load_state_dict(state)
    config = {
        "format": FORMAT,
        "class_names": class_names,
        "num_classes": len(class_names),
        "mask_net": spec,
        "normalization": hp.get("_normalization") or {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "classifier": {"reference": hp.get("classifier"), "sha256": hp.get("classifier_hash")},
        "targets": hp.get("targets", "labels"),
        "fill": hp.get("fill", "mean"),
        **hp.get("_kind", {}),
    }
    return LoadedExplainer(net, config).to(map_location)


def _checkpoint_mask_net(path: Path) -> tuple[dict[str, Tensor], list[str], dict[str, Any], dict[str, Any]]:
    ckpt = read_checkpoint(path)
    hp = ckpt.get("hyper_parameters", {})
    if "mask_net" not in hp:
        raise ValueError(f"'{path}' is not an ExplainerModule checkpoint (no 'mask_net' hyper-parameter)")
    prefix = "mask_net."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    names = hp.get("class_names") or [str(i) for i in range(int(hp["num_classes"]))]
    kind = ckpt.get("explainer_kind")
    kind = {k: str(v) for k, v in kind.items() if k in ("kind", "map_output")} if isinstance(kind, dict) else {}
    hp = {**hp, "_normalization": _normalization_of(ckpt), "_kind": kind}
    return state, list(names), {"name": hp["mask_net"], "kwargs": dict(hp.get("mask_net_kwargs") or {})}, hp


def _normalization_of(ckpt: dict[str, Any]) -> dict[str, list[float]] | None:
    """The image normalisation a checkpoint was trained with (None for checkpoints that predate it)."""
    norm = ckpt.get("normalization")
    if not isinstance(norm, dict):
        return None
    mean, std = norm.get("mean"), norm.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        return None
    return {"mean": [float(m) for m in mean], "std": [float(v) for v in std]}


def read_mask_net_state(source: str | Path) -> tuple[dict[str, Tensor], list[str], dict[str, Any]]:
    """The mask-network state, class names and network spec of an export folder or a checkpoint."""
    source = Path(source)
    if source.is_dir():
        config = _read_config(source)
        return _read_weights(source / WEIGHTS_NAME), list(config["class_names"]), config["mask_net"]
    state, names, spec, _ = _checkpoint_mask_net(source)
    return state, names, spec


def save_example_masks(model: LoadedExplainer, images: Tensor, path: str | Path, max_images: int = 6) -> Path:
    """A PNG grid: each image, then its masks for the classes the Explainer finds most present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = images[:max_images].cpu()
    masks = model.cpu().explain(images)
    if model.map_output == "values":  # positive evidence, each map scaled to its maximum
        masks = masks.clamp(min=0) / masks.flatten(2).amax(2).clamp(min=1e-12)[..., None, None]
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    rgb = (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    shown = 3
    top = masks.flatten(2).amax(2).topk(min(shown, masks.shape[1]), dim=1).indices
    fig, axes = plt.subplots(len(rgb), shown + 1, figsize=(1.6 * (shown + 1), 1.6 * len(rgb)), squeeze=False)
    for i in range(len(rgb)):
        axes[i, 0].imshow(rgb[i])
        axes[i, 0].set_title("image", fontsize=7)
        for j, cls in enumerate(top[i].tolist()):
            axes[i, j + 1].imshow(rgb[i])
            axes[i, j + 1].imshow(masks[i, cls].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[i, j + 1].set_title(f"mask '{model.class_names[cls]}'", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    return save_figure(fig, path)
