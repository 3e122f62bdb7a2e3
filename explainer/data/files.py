"""Reading image datasets from disk: clear errors, corrupt-image handling and the shared dataset base.

* :class:`DatasetNotFoundError` — one error for a missing or incomplete dataset root that names the path,
  the expected layout and how to obtain the data (raised when a dataset is built, i.e. at ``setup``).
* :func:`read_image` — decodes an image to ``[3, H, W]`` uint8 RGB and raises :class:`CorruptImageError`
  naming the file when it cannot (truncated or unreadable files).
* :class:`AnnotatedImageDataset` — the base of the VOC, COCO and folder datasets: ``load`` decodes a
  :class:`~explainer.data.transforms.RawSample`, ``__getitem__`` transforms it, and with
  ``skip_corrupt=True`` a corrupt image yields ``None`` (dropped by :func:`~explainer.data.batch.collate`)
  and is counted in a counter shared with the loader's worker processes.
* :class:`~explainer.data.loader.SkipReportingLoader` (the data modules' ``DataLoader``) warns at the end
  of each pass with the number of corrupt images skipped during it.

Datasets only ever read their folders; nothing in a dataset root is written.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg

from explainer.data.batch import Sample
from explainer.data.transforms import RawSample, SampleTransform

log = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root is missing or incomplete (the message names the path, the layout and the source)."""


class CorruptImageError(OSError):
    """An image file exists but cannot be decoded (truncated, corrupt, or not an image)."""


def check_layout(name: str, root: str | Path, required: Sequence[str | Path], layout: str, obtain: str) -> None:
    """Raises one :class:`DatasetNotFoundError` listing every missing path under ``root``.

    Args:
        name: the dataset's name, for the message.
        root: the dataset root as configured.
        required: paths (relative to ``root`` or absolute) that must exist.
        layout: the expected folder layout, one entry per line.
        obtain: how to obtain the data.
    """
    root = Path(root)
    missing = [p for p in (root / r for r in required) if not p.exists()]
    if missing:
        raise DatasetNotFoundError(dataset_error(name, root, missing, layout, obtain))


def dataset_error(
    name: str, root: Path, missing: Sequence[Path], layout: str, obtain: str, what: str = "missing"
) -> str:
    """The message of a :class:`DatasetNotFoundError` (see :func:`check_layout`)."""
    shown = "\n".join(f"  {what}: {p}" for p in missing[:10])
    more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    indented = "\n".join(f"  {line}" for line in layout.strip().splitlines())
    return (
        f"{name} not found or incomplete under root '{root}' (resolved: {root.resolve()}):\n{shown}{more}\n"
        f"Expected layout:\n{indented}\nHow to obtain it: {obtain}"
    )


DECODERS = ("pil", "torchvision")
"""The image decoders of :func:`read_image` (a data module's ``decoder`` option)."""

Decoder = Literal["pil", "torchvision"]

_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"


def read_image(path: str | Path, decoder: Decoder = "pil") -> torch.Tensor:
    """Decodes an image file to ``[3, H, W]`` uint8 RGB (grey, palette and CMYK become RGB).

    The tensor is a channels-last view (``permute`` of the ``H x W x 3`` pixels), which resizes fastest.

    Truncated files are errors, never silently padded.

    Args:
        path: the image file.
        decoder: ``pil`` (Pillow, every format) or ``torchvision`` (``torchvision.io.decode_jpeg``, libjpeg-turbo
            without Pillow's conversions, for JPEG files; any other file, a JPEG without its end marker
            (truncated) and a JPEG it cannot decode (e.g. CMYK) go through Pillow, so errors and colours are
            the same). Both give the same pixels on baseline RGB JPEGs (tested).

    Returns:
        The image tensor.

    Raises:
        FileNotFoundError: the file does not exist.
        CorruptImageError: the file cannot be decoded (the message names it).
        ValueError: an unknown decoder.
    """
    path = Path(path)
    if decoder not in DECODERS:
        raise ValueError(f"unknown image decoder '{decoder}'; expected one of {DECODERS}")
    source: Path | io.BytesIO = path
    if decoder == "torchvision":
        data = _read_bytes(path)
        image = _decode_jpeg(data)
        if image is not None:
            return image
        source = io.BytesIO(data)  # Pillow decodes the bytes already read, not the file again
    try:
        with Image.open(source) as img:
            img.load()  # decode now, so that truncation raises here
            array = np.array(img if img.mode == "RGB" else img.convert("RGB"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image file not found: {path}") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise CorruptImageError(f"cannot decode image file {path} (truncated or corrupt?): {err}") from err
    return torch.from_numpy(array).permute(2, 0, 1)  # channels-last in memory: the fast path of resize


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image file not found: {path}") from err


def _decode_jpeg(data: bytes) -> torch.Tensor | None:
    """A complete JPEG decoded by torchvision as channels-last ``[3, H, W]`` uint8; ``None`` for anything else."""
    if not data.startswith(_JPEG_START) or not data.rstrip(b"\x00").endswith(_JPEG_END):
        return None  # not a JPEG, or truncated: Pillow decodes it or names the error
    try:
        with warnings.catch_warnings():  # torchvision 0.29 marks its decoders deprecated (in favour of torchcodec)
            warnings.simplefilter("ignore", DeprecationWarning)
            chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return None  # e.g. CMYK or a lossless JPEG: Pillow converts it
    return chw.permute(1, 2, 0).contiguous().permute(2, 0, 1)


def read_label_map(path: str | Path) -> np.ndarray:
    """Reads a single-channel label PNG (palette ``P`` or grey ``L`` mode) as ``[H, W]`` uint8 indices.

    Args:
        path: the PNG.

    Returns:
        The label values (palette indices for ``P`` images, not colours).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I;16", "I"):
                raise ValueError(
                    f"label map {path} has mode {img.mode}; expected a single-channel PNG of class indices "
                    "(palette 'P' or grey 'L' mode), not a colour rendering"
                )
            array = np.array(img)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"label map not found: {path}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise CorruptImageError(f"cannot decode label map {path}: {err}") from err
    if array.max(initial=0) > 255:
        raise ValueError(f"label map {path} holds values above 255")
    return array.astype(np.uint8, copy=False)


def label_map_masks(
    label_map: np.ndarray, num_classes: int, void: int = 255, source: str | Path = "label map"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Splits a label map (``class + 1`` per pixel, 0 background, ``void`` ignored) into per-class masks.

    Args:
        label_map: ``[H, W]`` uint8 label values.
        num_classes: the number of classes ``C`` (valid values are 0..C and ``void``).
        void: the ignored value (foreground of no class).
        source: the file, for error messages.

    Returns:
        ``[k, H, W]`` bool masks of the ``k`` classes present and their ``[k]`` class indices.
    """
    counts = np.bincount(label_map.ravel(), minlength=256)
    allowed = np.zeros(256, dtype=bool)
    allowed[: num_classes + 1] = True
    allowed[void] = True
    bad = np.flatnonzero(counts * ~allowed)
    if bad.size:
        raise ValueError(
            f"{source} holds values {bad.tolist()}; expected 0 (background), 1..{num_classes} "
            f"(class index + 1) or {void} (void)"
        )
    values = torch.from_numpy(np.flatnonzero(counts[1 : num_classes + 1]) + 1).to(torch.uint8)
    masks = torch.from_numpy(label_map).unsqueeze(0) == values.view(-1, 1, 1)  # void matches no class
    return masks, values.long() - 1


class SkipCounter:
    """A count of skipped items shared by the main process and the loader workers.

    Each process writes only its own slot of a shared-memory tensor (no lost updates without a lock);
    :meth:`total` sums the slots.
    """

    _SLOTS = 257

    def __init__(self) -> None:
        self._counts = torch.zeros(self._SLOTS, dtype=torch.int64).share_memory_()

    def add(self) -> None:
        """Counts one skipped item in this process's slot."""
        info = get_worker_info()
        slot = 0 if info is None else 1 + info.id % (self._SLOTS - 1)
        self._counts[slot] += 1

    def total(self) -> int:
        """The number of items skipped so far, over every process."""
        return int(self._counts.sum())


class AnnotatedImageDataset(Dataset):
    """Base of the file-backed datasets: ``load`` decodes, ``__getitem__`` transforms.

    Args:
        transform: turns a :class:`RawSample` into a :class:`Sample` (default: stretch to 224 px).
        skip_corrupt: return ``None`` for a corrupt image (collate drops it, the loader reports the count)
            instead of raising :class:`CorruptImageError`.
    """

    name = "dataset"

    decoder: Decoder = "pil"
    """The image decoder of :meth:`read` (a data module sets its ``decoder`` option here)."""

    def __init__(self, transform: SampleTransform | None = None, skip_corrupt: bool = False) -> None:
        self.transform = transform if transform is not None else SampleTransform()
        self.skip_corrupt = skip_corrupt
        self.skip_counter = SkipCounter()

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, path: str | Path) -> torch.Tensor:
        """Decodes the image file ``path`` with this dataset's :attr:`decoder` (see :func:`read_image`)."""
        return read_image(path, self.decoder)

    def load(self, index: int) -> RawSample:
        """Decodes item ``index`` in its own pixel coordinates."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample | None:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} of {len(self)} images")
        try:
            raw = self.load(index)
        except CorruptImageError as err:
            if not self.skip_corrupt:
                raise
            self.skip_counter.add()
            log.warning("skipping a corrupt image of %s: %s", self.name, err)
            return None
        return self.transform(raw)


__all__ = [
    "DECODERS",
    "AnnotatedImageDataset",
    "CorruptImageError",
    "Decoder",
    "DatasetNotFoundError",
    "SkipCounter",
    "check_layout",
    "dataset_error",
    "label_map_masks",
    "read_image",
    "read_label_map",
]
