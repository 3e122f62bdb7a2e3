"""Export and loading of a trained in-filler (FIDO's learned in-fill).

An export is a folder::

    model.safetensors   the in-painting network's weights (nothing else)
    config.json         format "infiller-export/1", library version, network spec (name + arguments),
                        image size and normalisation it was trained at, training facts
    examples.png        example in-fills (when example images were given)

:func:`load_infiller` rebuilds it from data only (JSON and safetensors: nothing is unpickled, nothing named
in the files is imported) and refuses a damaged or incomplete folder with the fix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import explainer
from explainer.atomic import check_replaceable, replacing_folder
from explainer.export import check_finite
from explainer.nets.infiller import InfillerNet, build_infiller_net
from explainer.ops import denormalize
from explainer.viz import save_figure

FORMAT = "infiller-export/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
EXPORT_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, "examples.png"})
"""The files an in-filler export holds; a folder with anything else is never replaced."""


class LoadedInfiller(nn.Module):
    """An exported in-filler: the network and what it was trained on.

    Args:
        net: the in-painting network.
        config: the export's ``config.json`` content.

    Attributes:
        image_size: ``(H, W)`` of the images it was trained on.
        mean: the normalisation mean of those images.
        std: their normalisation standard deviation.
    """

    def __init__(self, net: InfillerNet, config: dict[str, Any]) -> None:
        super().__init__()
        self.net = net.eval()
        self.config = config
        self.image_size: tuple[int, int] = (int(config["image_size"][0]), int(config["image_size"][1]))
        self.mean = tuple(float(v) for v in config["normalization"]["mean"])
        self.std = tuple(float(v) for v in config["normalization"]["std"])

    def forward(self, images: Tensor, keep: Tensor) -> Tensor:
        """The in-filled images ``keep * images + (1 - keep) * prediction`` (see :class:`InfillerNet`)."""
        return self.net(images, keep)


def check_infiller_export_target(folder: Path, overwrite: bool) -> None:
    """Refuses to export into ``folder`` when that would replace an export (without ``overwrite``) or files
    that are not an in-filler export (see :func:`~explainer.atomic.check_replaceable`)."""
    check_replaceable(folder, CONFIG_NAME, FORMAT, EXPORT_FILES, overwrite, "in-filler export")


def export_infiller(
    net: InfillerNet,
    folder: str | Path,
    image_size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    training: dict[str, Any] | None = None,
    example_images: Tensor | None = None,
    example_masks: Tensor | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a trained in-filler to ``folder``, whole or not at all.

    Args:
        net: the trained network.
        folder: the export folder (created).
        image_size: ``(H, W)`` the network was trained at.
        mean: normalisation mean of its training images.
        std: normalisation standard deviation.
        training: JSON-serialisable facts about the training (loss, masks, validation loss), recorded.
        example_images: a few normalised images for ``examples.png`` (with ``example_masks``).
        example_masks: their ``[N, 1, H, W]`` keep masks.
        overwrite: replace an existing in-filler export in ``folder``.

    Returns:
        The folder.
    """
    folder = Path(folder)
    check_infiller_export_target(folder, overwrite)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    check_finite(state, "the in-filler network")
    config = {
        "format": FORMAT,
        "library_version": explainer.__version__,
        "net": net.spec(),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "training": training or {},
    }
    _check_config(config, folder / CONFIG_NAME)
    with replacing_folder(folder) as staging:
        save_file(state, str(staging / WEIGHTS_NAME), metadata={"format": FORMAT})
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        loaded = load_infiller(staging)  # what is written loads back
        if example_images is not None and example_masks is not None:
            with torch.no_grad():
                fills = loaded(example_images.cpu().float(), example_masks.cpu().float())
            save_figure(
                infill_panel_figure(
                    example_images.cpu(), example_masks.cpu(), {"learned": fills}, loaded.mean, loaded.std
                ),
                staging / "examples.png",
            )
    return folder


def infill_panel_figure(
    images: Tensor,
    keep: Tensor,
    fills: dict[str, Tensor],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    title: str | None = None,
) -> Any:
    """A figure with one row per image: the image, its keep mask, the masked image and each in-fill.

    Args:
        images: ``[N, 3, H, W]`` normalised images.
        keep: ``[N, 1, H, W]`` keep masks.
        fills: in-filled images ``[N, 3, H, W]`` by column title.
        mean: the normalisation mean (to show the images in RGB).
        std: the normalisation standard deviation.
        title: the figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rgb(x: Tensor) -> Any:
        return denormalize(x.float(), mean, std).clamp(0, 1).permute(0, 2, 3, 1).numpy()

    columns = [("image", rgb(images)), ("keep mask", keep[:, 0].float().numpy()), ("masked", rgb(images * keep))]
    columns += [(name, rgb(x)) for name, x in fills.items()]
    rows = len(images)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.5 * len(columns), 1.55 * rows), squeeze=False)
    for j, (name, values) in enumerate(columns):
        for i in range(rows):
            ax = axes[i, j]
            if values.ndim == 3:
                ax.imshow(values[i], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(values[i])
            ax.axis("off")
        axes[0, j].set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _damaged(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: {why}; the in-filler export is damaged: export it again")


def _check_config(config: Any, path: Path) -> dict[str, Any]:
    """Validates the content of an export's ``config.json`` (types and ranges, never code)."""
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path} has format {found!r}; an in-filler export has {FORMAT!r}")
    size = config.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise _damaged(path, f"image_size must be [H, W] positive integers, got {size!r}")
    norm = config.get("normalization")
    for key in ("mean", "std"):
        values = norm.get(key) if isinstance(norm, dict) else None
        if not (
            isinstance(values, list)
            and len(values) == 3
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        ):
            raise _damaged(path, f"normalization.{key} must be 3 finite numbers, got {values!r}")
    if any(v <= 0 for v in norm["std"]):
        raise _damaged(path, f"normalization.std must be positive, got {norm['std']}")
    if not isinstance(config.get("net"), dict):
        raise _damaged(path, "no network spec ('net')")
    return config


def read_infiller_config(folder: str | Path) -> dict[str, Any]:
    """The validated ``config.json`` of an in-filler export folder."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise FileNotFoundError(
            f"'{folder}' is not an in-filler export folder (it does not exist or is a file); train one with "
            "python train.py fit --config configs/quickstart/infiller.yaml"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"'{folder}' is not an in-filler export: no {CONFIG_NAME} (export with "
            "explainer.export_infiller.export_infiller or a run with the ExportInfiller callback)"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _damaged(path, f"not valid JSON ({err})") from err
    return _check_config(config, path)


def load_infiller(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedInfiller:
    """Loads an exported in-filler folder (data only: JSON and safetensors).

    Args:
        path: the export folder.
        map_location: the device to load onto.

    Returns:
        The in-filler, in eval mode.

    Raises:
        FileNotFoundError: no export there, or its weights are missing.
        ValueError: a damaged export (unreadable JSON or weights, a wrong format, weights that do not fit the
            recorded network, non-finite weights).

    Examples::

        infiller = load_infiller("checkpoints/quickstart/infiller")
        completed = infiller(images, keep)
    """
    folder = Path(path)
    config = read_infiller_config(folder)
    net = build_infiller_net(config["net"])
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the in-filler export is incomplete, export it again")
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise _damaged(weights, f"not a readable safetensors file ({err})") from err
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise _damaged(weights, f"the weights do not fit the network recorded in {CONFIG_NAME} ({err})") from err
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise _damaged(weights, f"non-finite values in {', '.join(bad[:5])}")
    return LoadedInfiller(net, config).to(map_location)


__all__ = [
    "EXPORT_FILES",
    "FORMAT",
    "LoadedInfiller",
    "check_infiller_export_target",
    "export_infiller",
    "infill_panel_figure",
    "load_infiller",
    "read_infiller_config",
]
