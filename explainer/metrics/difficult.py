"""The "difficult" subset of the pointing game: the coverage rule and published per-image lists.

Two ways to pick the image-class pairs of the subset:

* :func:`difficult_pairs`, the rule behind the excitation-backprop authors' list: the class's ground truth
  covers less than 1/4 of the image and another class is present;
* :class:`DifficultList`, the published list itself, read from a text file in TorchRay's format
  (``torchray/benchmark/pointing_game_ebp_voc07_difficult.txt``, read by ``PointingGameBenchmark``):

  .. code-block:: text

      # comments start with '#'; blank lines are ignored
      000001<TAB>0<TAB>0<TAB>...<TAB>1<TAB>...     (an image id, then one 0/1 flag per class index)

  one line per image: the image id, then exactly ``num_classes`` flags ``0`` or ``1`` separated by tabs or
  spaces, the ``c``-th flag saying whether the pair (image, class ``c``) is difficult. Class indices are the
  data module's contiguous ones (VOC: the 20 classes in alphabetical order; COCO: the 80 categories in
  increasing category id, TorchRay's order too).

Images are matched by ``batch.ids``: exactly, or else by the number their id ends with, so TorchRay's COCO
names (``COCO_val2014_000000000042``) match COCO image ids (``42``); a number shared by several listed ids
matches none of them. As in TorchRay, an image that the list does not name has all its pairs in the subset
(TorchRay filters only listed images); such pairs are counted (``difficult_unlisted`` of
:class:`~explainer.metrics.PointingGame`) so a list that matches no id is noticed.

The file is data: it is read as text and never evaluated or imported.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from explainer.data.batch import Batch
from explainer.metrics.common import GroundTruth, gt_masks

LIST_FORMAT = (
    "one line per image: the image id, then one flag 0 or 1 per class index, separated by tabs or spaces "
    "(TorchRay's pointing_game_ebp_voc07_difficult.txt format); '#' starts a comment, blank lines are ignored"
)
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def difficult_pairs(batch: Batch, classes: Tensor, source: GroundTruth = "boxes", coverage: float = 0.25) -> Tensor:
    """The coverage rule of the "difficult" subset.

    Args:
        batch: the batch (ground truth and labels).
        classes: ``[B, K]`` class indices (``-1`` = padding, never difficult).
        source: ground truth, ``"boxes"`` or ``"masks"``.
        coverage: the threshold on the fraction of the image the class's ground truth covers.

    Returns:
        ``[B, K]`` bool: the class's ground truth covers less than ``coverage`` of the image and another
        class is present (``batch.labels``). Coverage is measured at the batch image size, which a plain
        resize preserves.
    """
    gt = gt_masks(batch, classes, source)
    small = gt.flatten(2).float().mean(-1) < coverage
    others = ((batch.labels > 0.5).sum(1) >= 2).to(small.device).unsqueeze(1)
    return small & others & (classes.to(small.device) >= 0)


def _number(image_id: str) -> int | None:
    match = _TRAILING_NUMBER.search(image_id)
    return int(match.group(1)) if match else None


class DifficultList:
    """A published per-image list of difficult image-class pairs (see the module docstring for the format).

    Args:
        path: the text file.
        num_classes: the number of classes ``C``: every line must carry exactly ``C`` flags.

    Raises:
        FileNotFoundError: the file does not exist (the message gives the expected format).
        ValueError: a malformed line (the message names the file, the line number and the format), a
            repeated image id, or a file without entries.
    """

    def __init__(self, path: str | Path, num_classes: int) -> None:
        self.path = Path(path)
        self.num_classes = num_classes
        if not self.path.is_file():
            raise FileNotFoundError(f"difficult list {self.path} not found (expected a text file, {LIST_FORMAT})")
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"difficult list {self.path} is not a UTF-8 text file ({LIST_FORMAT})") from error
        rows: dict[str, int] = {}
        flags: list[list[bool]] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            image_id, *values = line.split()
            where = f"difficult list {self.path}, line {number}"
            if len(values) != num_classes or any(v not in ("0", "1") for v in values):
                bad = next((v for v in values if v not in ("0", "1")), None)
                found = (
                    f"a value {bad!r}" if bad is not None and len(values) == num_classes else (f"{len(values)} values")
                )
                raise ValueError(
                    f"{where}: expected an image id followed by {num_classes} flags 0/1 (one per class), got "
                    f"{found} after id {image_id!r}; format: {LIST_FORMAT}"
                )
            if image_id in rows:
                raise ValueError(f"{where}: image id {image_id!r} is listed twice (first on an earlier line)")
            rows[image_id] = len(flags)
            flags.append([v == "1" for v in values])
        if not flags:
            raise ValueError(f"difficult list {self.path} has no entries; format: {LIST_FORMAT}")
        self.rows = rows
        numbers: dict[int, int | None] = {}
        for image_id, row in rows.items():
            key = _number(image_id)
            if key is not None:
                numbers[key] = None if key in numbers else row  # a shared number is ambiguous: no match
        self._numbers = {key: row for key, row in numbers.items() if row is not None}
        # one extra row for images the list does not name: all pairs difficult, as in TorchRay
        self.table = torch.tensor(flags + [[True] * num_classes], dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def source(self) -> str:
        """``"list:<file name>"``."""
        return f"list:{self.path.name}"

    def row_indices(self, ids: list[str]) -> Tensor:
        """``[B]`` long row of each image id in :attr:`table` (``len(self)`` for images not listed)."""
        unlisted = len(self.rows)
        out = []
        for image_id in ids:  # a dictionary look-up per image id (strings cannot be vectorised)
            row = self.rows.get(image_id)
            if row is None:
                key = _number(image_id)
                row = self._numbers.get(key, unlisted) if key is not None else unlisted
            out.append(row)
        return torch.tensor(out, dtype=torch.long)

    def lookup(self, ids: list[str] | None, classes: Tensor, table: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The flags of the asked pairs.

        Args:
            ids: the batch's image ids (``batch.ids``).
            classes: ``[B, K]`` class indices (``-1`` = padding, never difficult).
            table: :attr:`table` already on the device of ``classes`` (default: moved there).

        Returns:
            ``(difficult, unlisted)``: ``[B, K]`` bool flags, and ``[B]`` bool, True for images the list
            does not name.
        """
        if ids is None or len(ids) != classes.shape[0]:
            got = "no ids (Batch.ids is None)" if ids is None else f"{len(ids)} ids for {classes.shape[0]} images"
            raise ValueError(
                f"the difficult list {self.path.name} matches images by Batch.ids, but the batch has {got}; "
                "use a data module that sets Sample.id, or difficult_list=None for the coverage rule"
            )
        table = self.table.to(classes.device) if table is None else table
        rows = self.row_indices(list(ids)).to(classes.device)
        flags = table[rows].gather(1, classes.clamp(min=0, max=self.num_classes - 1))
        return flags & (classes >= 0), rows == len(self.rows)
