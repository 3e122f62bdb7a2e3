"""CUB-200-2011: 200 bird species with one box and 15 part keypoints per image.

The dataset on which part-prototype networks are evaluated: its part keypoints (back, beak, belly, breast,
crown, forehead, eyes, legs, wings, nape, tail, throat) feed :class:`~explainer.metrics.prototypes.
PrototypeConsistency` and :class:`~explainer.metrics.prototypes.PrototypeStability` during validation and
testing of a :class:`~explainer.modules.prototypes.PrototypeModule`, and ``benchmarks/prototypes.py --data
cub`` scores fitted heads against the random controls. Ground-truth conventions:

* labels: one-hot over the 200 classes in the order of ``classes.txt`` (names without the ``001.`` prefix);
* boxes: ``bounding_boxes.txt`` gives ``x y width height`` in pixels; the box is ``(x, y, x + w, y + h)``
  in the project's continuous coordinates, with the image's class;
* keypoints: ``parts/part_locs.txt`` gives ``x y visible`` per image and part; visible parts keep their
  pixel coordinates as given, invisible ones are NaN; one ``[1, P, 2]`` array per image (``P = 15``);
* splits: ``train_test_split.txt`` defines train and test. CUB has no validation split: ``val_fraction`` of
  each class's training images (seeded) is held out for validation, or with ``val_fraction=0`` the test
  split also serves as validation;
* no segmentation masks (``masks=None``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explainer.data.base import FileDataModule
from explainer.data.files import AnnotatedImageDataset, DatasetNotFoundError, check_layout
from explainer.data.transforms import RawSample, SampleTransform

CUB_LAYOUT = """<root>/CUB_200_2011/images.txt                 (<image_id> <class_dir>/<file>.jpg)
<root>/CUB_200_2011/image_class_labels.txt      (<image_id> <class_id>)
<root>/CUB_200_2011/train_test_split.txt        (<image_id> <1 = train, 0 = test>)
<root>/CUB_200_2011/bounding_boxes.txt          (<image_id> <x> <y> <width> <height>)
<root>/CUB_200_2011/classes.txt                 (<class_id> <nnn.Name>)
<root>/CUB_200_2011/parts/parts.txt             (<part_id> <part name>)
<root>/CUB_200_2011/parts/part_locs.txt         (<image_id> <part_id> <x> <y> <visible>)
<root>/CUB_200_2011/images/<class_dir>/<file>.jpg"""
CUB_OBTAIN = (
    "download CUB_200_2011.tgz from the Caltech-UCSD Birds-200-2011 page "
    "(https://www.vision.caltech.edu/datasets/cub_200_2011/) and extract it into <root>"
)
_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "classes.txt",
    "parts/parts.txt",
    "parts/part_locs.txt",
    "images",
)


def resolve_cub_root(root: str | Path) -> Path:
    """The ``CUB_200_2011`` folder, given it or the folder that holds it."""
    root = Path(root)
    return root if (root / "images.txt").is_file() or not (root / "CUB_200_2011").is_dir() else root / "CUB_200_2011"


def _rows(path: Path, columns: int) -> list[list[str]]:
    """The whitespace-separated rows of a CUB text file; the last column keeps any spaces (part names)."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = line.split(maxsplit=columns - 1)
        if len(row) != columns:
            raise ValueError(f"{path}, line {number}: expected {columns} columns, got '{line}'")
        rows.append(row)
    return rows


@dataclass
class CUBAnnotations:
    """Everything in the CUB text files, indexed by image.

    Args:
        root: the ``CUB_200_2011`` folder.
        class_names: the 200 class names (``classes.txt`` order, ``001.`` prefixes removed).
        part_names: the part names (``parts.txt`` order).
        image_ids: the image ids in ``images.txt`` order.
        paths: image file per id, relative to ``images/``.
        classes: class index (0-based) per id.
        is_train: the official split per id.
        boxes: ``[4]`` ``(x0, y0, x1, y1)`` per id.
        keypoints: ``[P, 2]`` per id (NaN where not visible).
    """

    root: Path
    class_names: list[str]
    part_names: list[str]
    image_ids: list[int]
    paths: dict[int, str]
    classes: dict[int, int]
    is_train: dict[int, bool]
    boxes: dict[int, np.ndarray]
    keypoints: dict[int, np.ndarray]

    @classmethod
    def read(cls, root: str | Path) -> CUBAnnotations:
        """Parses the CUB text files under ``root`` (``CUB_200_2011`` or the folder holding it).

        Raises:
            DatasetNotFoundError: a file of the layout is missing.
            ValueError: a file is malformed, or an image lacks its class, split or box.
        """
        folder = resolve_cub_root(root)
        check_layout("CUB-200-2011", folder, _FILES, CUB_LAYOUT, CUB_OBTAIN)
        class_ids = {int(i): n.split(".", 1)[-1] for i, n in _rows(folder / "classes.txt", 2)}
        order = sorted(class_ids)
        class_index = {cid: i for i, cid in enumerate(order)}
        part_ids = {int(i): n.strip() for i, n in _rows(folder / "parts" / "parts.txt", 2)}
        part_order = sorted(part_ids)
        part_index = {pid: i for i, pid in enumerate(part_order)}
        paths = {int(i): p.strip() for i, p in _rows(folder / "images.txt", 2)}
        labels = {int(i): int(c) for i, c in _rows(folder / "image_class_labels.txt", 2)}
        split = {int(i): s.strip() == "1" for i, s in _rows(folder / "train_test_split.txt", 2)}
        boxes = {}
        for i, x, y, w, h in _rows(folder / "bounding_boxes.txt", 5):
            x0, y0 = float(x), float(y)
            boxes[int(i)] = np.array([x0, y0, x0 + float(w), y0 + float(h)], np.float32)
        image_ids = list(paths)
        keypoints = {i: np.full((len(part_order), 2), np.nan, np.float32) for i in image_ids}
        for i, p, x, y, visible in _rows(folder / "parts" / "part_locs.txt", 5):
            image, part = int(i), int(p)
            if image in keypoints and part in part_index and float(visible) > 0:
                keypoints[image][part_index[part]] = (float(x), float(y))
        for name, table in (
            ("image_class_labels.txt", labels),
            ("train_test_split.txt", split),
            ("bounding_boxes.txt", boxes),
        ):
            missing = [i for i in image_ids if i not in table]
            if missing:
                raise ValueError(f"{folder / name} has no row for {len(missing)} image(s), e.g. id {missing[0]}")
        unknown = sorted({c for c in labels.values() if c not in class_index})
        if unknown:
            raise ValueError(
                f"{folder / 'image_class_labels.txt'} uses class ids {unknown[:5]} missing from classes.txt"
            )
        return cls(
            folder,
            [class_ids[c] for c in order],
            [part_ids[p] for p in part_order],
            image_ids,
            paths,
            {i: class_index[labels[i]] for i in image_ids},
            {i: split[i] for i in image_ids},
            boxes,
            keypoints,
        )

    def split_ids(self, split: str, val_fraction: float = 0.1, seed: int = 0) -> list[int]:
        """The image ids of ``train``, ``val`` or ``test`` (see the module docstring)."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split '{split}'; expected train, val or test")
        if split == "test" or (split == "val" and val_fraction == 0):
            return [i for i in self.image_ids if not self.is_train[i]]
        train = [i for i in self.image_ids if self.is_train[i]]
        held_out: set[int] = set()
        if val_fraction > 0:
            by_class: dict[int, list[int]] = {c: [] for c in range(len(self.class_names))}
            for i in train:
                by_class[self.classes[i]].append(i)
            rng = np.random.default_rng(seed)
            for members in by_class.values():
                count = min(len(members) - 1, math.ceil(val_fraction * len(members))) if len(members) > 1 else 0
                held_out.update(members[j] for j in rng.permutation(len(members))[:count])
        return [i for i in train if (i in held_out) == (split == "val")]


class CUB200Dataset(AnnotatedImageDataset):
    """One split of CUB-200-2011 (see the module docstring).

    Args:
        annotations: the parsed text files (:meth:`CUBAnnotations.read`).
        image_ids: the images of this split.
        transform: turns a raw sample into a :class:`~explainer.data.batch.Sample`.
        skip_corrupt: skip corrupt images instead of raising.
    """

    name = "CUB-200-2011"

    def __init__(
        self,
        annotations: CUBAnnotations,
        image_ids: Sequence[int],
        transform: SampleTransform | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        super().__init__(transform, skip_corrupt)
        self.annotations = annotations
        self.ids = list(image_ids)
        checked = self.ids[:1000]  # a quick check of an incomplete extraction; every image is read later anyway
        missing = [
            annotations.root / "images" / annotations.paths[i]
            for i in checked
            if not (annotations.root / "images" / annotations.paths[i]).is_file()
        ]
        if missing:
            raise DatasetNotFoundError(
                f"CUB-200-2011 under '{annotations.root}' lacks {len(missing)} of the first "
                f"{len(checked)} image files listed in images.txt, e.g. {missing[0]}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> RawSample:
        ann, image_id = self.annotations, self.ids[index]
        image = self.read(ann.root / "images" / ann.paths[image_id])
        cls = ann.classes[image_id]
        labels = torch.zeros(len(ann.class_names))
        labels[cls] = 1.0
        return RawSample(
            image=image,
            labels=labels,
            boxes=torch.from_numpy(ann.boxes[image_id])[None],
            box_labels=torch.tensor([cls]),
            difficult=torch.zeros(1, dtype=torch.bool),
            keypoints=torch.from_numpy(ann.keypoints[image_id])[None],
            id=Path(ann.paths[image_id]).stem,
        )


class CUB200DataModule(FileDataModule):
    """CUB-200-2011 for training classifiers and fitting and scoring part-prototype heads.

    Args:
        root: the folder holding ``CUB_200_2011`` (or that folder itself).
        val_fraction: share of each class's training images held out for validation (0: validate on test).
        seed: the seed of that hold-out.
        **kwargs: the common arguments of :class:`~explainer.data.base.FileDataModule` (``image_size``,
            ``resize``, ``augment``, ``skip_corrupt``, ``batch_size``, ``num_workers``, ``pin_memory``,
            ``mean``, ``std``).
    """

    def __init__(
        self,
        root: str = "data/cub",
        val_fraction: float = 0.1,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self._annotations: CUBAnnotations | None = None

    @property
    def annotations(self) -> CUBAnnotations:
        """The parsed text files (read on first use)."""
        if self._annotations is None:
            self._annotations = CUBAnnotations.read(self.root)
        return self._annotations

    @property
    def class_names(self) -> list[str]:
        return list(self.annotations.class_names)

    @property
    def part_names(self) -> list[str]:
        """The names of the keypoint parts, in keypoint order."""
        return list(self.annotations.part_names)

    @property
    def num_parts(self) -> int:
        """Keypoints per object (15 for CUB-200-2011)."""
        return len(self.annotations.part_names)

    def make_dataset(self, split: str) -> CUB200Dataset:
        """The dataset of ``split`` (``train``, ``val`` or ``test``) with this module's settings."""
        ids = self.annotations.split_ids(split, self.hparams.val_fraction, self.hparams.seed)
        return CUB200Dataset(self.annotations, ids, self.transform(split), self.skip_corrupt)


__all__ = ["CUB200DataModule", "CUB200Dataset", "CUBAnnotations", "CUB_LAYOUT", "resolve_cub_root"]
