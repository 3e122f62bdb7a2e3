"""A custom multi-label dataset: a folder of images and a JSON or CSV file listing their labels.

JSON (the format :meth:`~explainer.data.digits.DigitScenes.save` writes)::

    {"classes": ["cat", "dog", ...],                     # optional: the class list, in index order
     "images": [
       {"image": "images/x.png",                        # required, relative to the JSON's folder
        "labels": ["cat"],                               # class names (default: the boxes' labels)
        "mask": "masks/x.png",                           # optional label map: class index + 1 per pixel,
                                                         #   0 background, 255 void (ignored)
        "boxes": [{"label": "cat", "box": [x0, y0, x1, y1], "difficult": false}],   # optional
        "split": "train",                                # only in a single file holding every split
        "id": "x"}]}                                     # optional (default: the image's file stem)

Boxes are 0-based pixel coordinates with ``x1`` / ``y1`` exclusive (as digit scenes write them).

CSV: a header row with the columns ``image`` and ``labels`` (class names separated by ``;`` or ``|``; an empty
cell means no label) and optionally ``mask``, ``split`` and ``id``, e.g.::

    image,labels,split
    photos/a.jpg,cat;dog,train
    photos/b.jpg,,val

Boxes cannot be given in a CSV (use JSON). Paths are relative to the annotation file's folder.

Splits come either from one file per split (``train_file`` / ``val_file`` / ``test_file``, relative to
``root``; e.g. ``DigitScenes(split).save(root / split)`` for each split) or, when ``annotations`` is set, from
one file whose records carry a ``split`` field (``train``, ``val`` or ``test``).

Class list: ``classes`` if given; else the ``classes`` of the JSON file(s) (they must agree); else the
sorted names found in all configured files. With a declared list, a label outside it is an error naming the
row; pass ``classes`` to pin the order and catch typos in CSV files.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from explainer.data.base import FileDataModule
from explainer.data.files import (
    AnnotatedImageDataset,
    DatasetNotFoundError,
    dataset_error,
    label_map_masks,
    read_label_map,
)
from explainer.data.labels import class_lookup, multi_hot
from explainer.data.transforms import RawSample, SampleTransform

SPLITS = ("train", "val", "test")
LABEL_SEPARATORS = re.compile(r"[;|]")
FOLDER_LAYOUT = """<root>/<train_file>   (default train/annotations.json; .json or .csv)
<root>/<val_file>     (default val/annotations.json)
<root>/<test_file>    (default test/annotations.json)
  or one <root>/<annotations> file whose records carry a "split" (train / val / test)
image and mask paths inside a file are relative to that file's folder"""
FOLDER_OBTAIN = (
    "write the annotation file(s) for your images as described in explainer/data/folder.py "
    "(DigitScenes(split).save(<root>/<split>) writes this layout for the embedded digit scenes)"
)


@dataclass
class FolderRecord:
    """One annotated image of a folder dataset (names resolved to class indices).

    Args:
        image: the image file.
        labels: class indices of the image.
        where: the file and row, for error messages.
        id: the image identifier.
        mask: optional label-map PNG (class index + 1 per pixel, 0 background, 255 void).
        boxes: ``(x0, y0, x1, y1)`` per object.
        box_labels: class index per box.
        difficult: flag per box.
        split: the record's split, when the file names one.
    """

    image: Path
    labels: list[int]
    where: str
    id: str
    mask: Path | None = None
    boxes: list[list[float]] = field(default_factory=list)
    box_labels: list[int] = field(default_factory=list)
    difficult: list[bool] = field(default_factory=list)
    split: str | None = None


def _read_rows(path: Path) -> tuple[list[str] | None, list[tuple[str, dict[str, Any]]]]:
    """The declared classes (JSON only) and ``(where, raw record)`` pairs of an annotation file."""
    if path.suffix.lower() == ".json":
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"cannot parse {path}: {err}") from err
        if not isinstance(content, dict) or not isinstance(content.get("images"), list):
            raise ValueError(f"{path} must hold an object with an 'images' list (and optionally 'classes')")
        classes = content.get("classes")
        if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise ValueError(f"'classes' in {path} must be a list of names")
        rows = []
        for i, rec in enumerate(content["images"]):
            if not isinstance(rec, dict):
                raise ValueError(f"{path} images[{i}]: expected an object, got {type(rec).__name__}")
            rows.append((f"{path} images[{i}]", rec))
        return classes, rows
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if "image" not in columns or "labels" not in columns:
                raise ValueError(f"{path} needs a header row with the columns 'image' and 'labels' (got {columns})")
            rows = []
            for row in reader:
                rec = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                labels = [n.strip() for n in LABEL_SEPARATORS.split(rec.get("labels", "")) if n.strip()]
                entry: dict[str, Any] = {"image": rec["image"], "labels": labels}
                for key in ("mask", "split", "id"):
                    if rec.get(key):
                        entry[key] = rec[key]
                rows.append((f"{path} row {reader.line_num}", entry))
        return None, rows
    raise ValueError(f"annotation file {path} must end in .json or .csv")


def _names_of(rec: dict[str, Any]) -> list[str]:
    names = list(rec.get("labels") or [])
    names += [b.get("label") for b in rec.get("boxes") or [] if isinstance(b, dict)]
    return [n for n in names if isinstance(n, str)]


def _resolve(path: Path, where: str, rec: dict[str, Any], lookup: dict[str, int]) -> FolderRecord:
    """Turns a raw record into a :class:`FolderRecord`, checking classes, files and boxes."""
    base = path.parent
    image = rec.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: no 'image' path")

    def index_of(name: Any) -> int:
        if name not in lookup:
            raise ValueError(f"{where}: unknown class {name!r}; the classes are {list(lookup)}")
        return lookup[name]

    boxes, box_labels, difficult = [], [], []
    for j, entry in enumerate(rec.get("boxes") or []):
        box = entry.get("box") if isinstance(entry, dict) else None
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise ValueError(f"{where}: box {j} must be {{'label': name, 'box': [x0, y0, x1, y1]}}, got {entry!r}")
        if not (box[2] >= box[0] and box[3] >= box[1]):
            raise ValueError(f"{where}: box {j} {box} has x1 < x0 or y1 < y0")
        boxes.append([float(v) for v in box])
        box_labels.append(index_of(entry.get("label")))
        difficult.append(bool(entry.get("difficult", False)))
    names = rec.get("labels")
    if names is None:
        labels = sorted(set(box_labels))
    elif isinstance(names, list):
        labels = [index_of(n) for n in names]
    else:
        raise ValueError(f"{where}: 'labels' must be a list of class names, got {names!r}")
    image_path = base / image
    if not image_path.is_file():
        raise FileNotFoundError(f"{where}: image file {image_path} does not exist")
    mask_path = None
    if rec.get("mask"):
        mask_path = base / str(rec["mask"])
        if not mask_path.is_file():
            raise FileNotFoundError(f"{where}: mask file {mask_path} does not exist")
    split = rec.get("split")
    return FolderRecord(
        image=image_path,
        labels=labels,
        where=where,
        id=str(rec.get("id") or Path(image).stem),
        mask=mask_path,
        boxes=boxes,
        box_labels=box_labels,
        difficult=difficult,
        split=None if split is None else str(split),
    )


class FolderDataset(AnnotatedImageDataset):
    """Annotated images listed by a folder dataset's annotation file.

    Args:
        records: the images and their annotations.
        classes: the class names in index order.
        transform: the :class:`~explainer.data.transforms.SampleTransform` (default: stretch to 224 px).
        skip_corrupt: skip corrupt images instead of raising.
        name: a name for messages.
    """

    def __init__(
        self,
        records: Sequence[FolderRecord],
        classes: Sequence[str],
        transform: SampleTransform | None = None,
        skip_corrupt: bool = False,
        name: str = "folder dataset",
    ) -> None:
        super().__init__(transform, skip_corrupt)
        self.records = list(records)
        self.classes = list(classes)
        self.name = name

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> RawSample:
        rec = self.records[index]
        image = self.read(rec.image)
        masks = mask_classes = None
        if rec.mask is not None:
            label_map = read_label_map(rec.mask)
            if label_map.shape != tuple(image.shape[-2:]):
                raise ValueError(
                    f"{rec.where}: mask {rec.mask} is {label_map.shape[1]}x{label_map.shape[0]} but "
                    f"the image is {image.shape[-1]}x{image.shape[-2]}"
                )
            masks, mask_classes = label_map_masks(label_map, len(self.classes), source=f"{rec.where}: mask {rec.mask}")
        return RawSample(
            image=image,
            labels=multi_hot(rec.labels, len(self.classes)),
            boxes=torch.tensor(rec.boxes, dtype=torch.float32).reshape(-1, 4),
            box_labels=torch.tensor(rec.box_labels, dtype=torch.long),
            difficult=torch.tensor(rec.difficult, dtype=torch.bool),
            masks=masks,
            mask_classes=mask_classes,
            id=rec.id,
        )


class FolderDataModule(FileDataModule):
    """A folder of images with a JSON or CSV annotation file (format in this module's docstring).

    Args:
        root: the dataset folder.
        annotations: one annotation file (relative to ``root``) holding every split in a ``split`` field;
            when set, ``train_file`` / ``val_file`` / ``test_file`` are not used.
        train_file: annotation file of the training split (relative to ``root``), or ``None``.
        val_file: annotation file of the validation split, or ``None``.
        test_file: annotation file of the test split, or ``None``.
        classes: the class names in index order (default: from the files, see the module docstring).
        **kwargs: the common arguments of :class:`~explainer.data.base.FileDataModule` (``image_size``,
            ``resize``, ``augment``, ``skip_corrupt``, ``batch_size``, ``num_workers``, ``pin_memory``,
            ``mean``, ``std``).
    """

    def __init__(
        self,
        root: str = "data/folder",
        annotations: str | None = None,
        train_file: str | None = "train/annotations.json",
        val_file: str | None = "val/annotations.json",
        test_file: str | None = "test/annotations.json",
        classes: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if classes is not None:
            class_lookup(classes)  # refuses duplicates
        self.root = Path(root)
        self._classes: list[str] | None = list(classes) if classes is not None else None
        self._rows: dict[Path, tuple[list[str] | None, list[tuple[str, dict[str, Any]]]]] = {}

    # -- files -----------------------------------------------------------------------------------------
    def _files(self) -> dict[str, Path]:
        """The annotation file of each configured split."""
        if self.hparams.annotations:
            return {s: self.root / self.hparams.annotations for s in SPLITS}
        names = {"train": self.hparams.train_file, "val": self.hparams.val_file, "test": self.hparams.test_file}
        return {s: self.root / f for s, f in names.items() if f}

    def _rows_of(self, path: Path) -> tuple[list[str] | None, list[tuple[str, dict[str, Any]]]]:
        if path not in self._rows:
            if not path.is_file():
                raise DatasetNotFoundError(
                    dataset_error("folder dataset", self.root, [path], FOLDER_LAYOUT, FOLDER_OBTAIN)
                )
            self._rows[path] = _read_rows(path)
        return self._rows[path]

    @property
    def class_names(self) -> list[str]:
        if self._classes is None:
            files = sorted(set(self._files().values()))
            existing = [f for f in files if f.is_file()]
            if not existing:
                missing = files or [self.root]
                raise DatasetNotFoundError(
                    dataset_error("folder dataset", self.root, missing, FOLDER_LAYOUT, FOLDER_OBTAIN)
                )
            declared = {f: self._rows_of(f)[0] for f in existing}
            lists = {tuple(c) for c in declared.values() if c is not None}
            if len(lists) > 1:
                raise ValueError(
                    f"the annotation files declare different class lists: "
                    f"{ {str(f): c for f, c in declared.items() if c is not None} }"
                )
            if lists:
                classes = list(lists.pop())
            else:
                classes = sorted({n for f in existing for _, rec in self._rows_of(f)[1] for n in _names_of(rec)})
            if not classes:
                raise ValueError(f"no classes found in {[str(f) for f in existing]}; give `classes`")
            class_lookup(classes)
            self._classes = classes
        return list(self._classes)

    def records(self, split: str) -> list[FolderRecord]:
        """The checked records of ``split`` (``train``, ``val`` or ``test``)."""
        files = self._files()
        if split not in files:
            raise RuntimeError(f"{type(self).__name__} has no '{split}' split: set {split}_file or annotations")
        path = files[split]
        lookup = class_lookup(self.class_names)
        _, rows = self._rows_of(path)
        out = []
        for where, rec in rows:
            if self.hparams.annotations:
                if rec.get("split") not in SPLITS:
                    raise ValueError(
                        f"{where}: 'split' must be one of {SPLITS} in a single annotation file, "
                        f"got {rec.get('split')!r}"
                    )
                if rec["split"] != split:
                    continue
            out.append(_resolve(path, where, rec, lookup))
        if not out:
            raise ValueError(f"the '{split}' split of {path} has no images")
        return out

    def make_dataset(self, split: str) -> FolderDataset:
        """The dataset of ``split`` with this module's settings."""
        return FolderDataset(
            self.records(split), self.class_names, self.transform(split), self.skip_corrupt, name=f"{self.root} {split}"
        )

    def has_split(self, split: str) -> bool:
        """Whether an annotation file is configured for ``split``."""
        return split in self._files()

    def check_root(self, splits: Sequence[str]) -> None:
        """The annotation file of every split in ``splits`` must exist."""
        missing = sorted({f for s, f in self._files().items() if s in splits and not f.is_file()})
        if missing:
            raise DatasetNotFoundError(
                dataset_error("folder dataset", self.root, missing, FOLDER_LAYOUT, FOLDER_OBTAIN)
            )


__all__ = ["FolderDataModule", "FolderDataset", "FolderRecord", "LABEL_SEPARATORS"]
