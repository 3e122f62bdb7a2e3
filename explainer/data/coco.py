"""MS-COCO 2014 as a multi-label dataset with boxes and per-class segmentation masks.

Built on torchvision's ``CocoDetection`` (pycocotools index) and pycocotools' mask decoding.
Ground-truth conventions:

* classes: the 80 categories, raw ids 1..90 with gaps mapped to contiguous indices 0..79 in id order
  (:data:`~explainer.data.labels.COCO_CATEGORIES`; the original code kept 91 raw ids);
* labels: multi-hot over the categories of the image's annotations; an image without annotations has
  all-zero labels (the original code labelled such images as *every* class);
* boxes: COCO ``[x, y, w, h]`` becomes ``(x, y, x + w, y + h)`` in 0-based pixel coordinates;
* crowd regions (``iscrowd=1``, RLE-encoded groups) are flagged: their boxes carry ``difficult=True``,
  their pixels belong to their class's mask, and they count as labels unless ``crowd_as_labels=False``;
* masks: per class the union of the instance masks (``annToRLE``, merged per class, one batched decode), crowd
  regions included; computed for validation / test images (``train_masks`` adds them for training).

Annotations are indexed by image once, when pycocotools loads the JSON; per item only the image's own
annotations are touched.

Evaluation subsets and the validation split carved out of ``train2014`` are drawn with a seed and saved as
JSON lists of image ids under ``splits_dir`` (never inside the dataset root); a saved list is read back
instead of being drawn again, so subsets stay the same across runs and library versions.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.datasets import CocoDetection

from explainer.data.base import FileDataModule
from explainer.data.files import AnnotatedImageDataset, DatasetNotFoundError, dataset_error
from explainer.data.labels import COCO_CATEGORIES, COCO_CLASSES, COCO_ID_TO_INDEX, multi_hot
from explainer.data.transforms import RawSample, SampleTransform

COCOImageSet = Literal["train2014", "val2014"]
COCO_IMAGE_SETS: tuple[str, ...] = ("train2014", "val2014")
COCO_LAYOUT = """<root>/annotations/instances_train2014.json
<root>/annotations/instances_val2014.json
<root>/train2014/COCO_train2014_<id>.jpg
<root>/val2014/COCO_val2014_<id>.jpg"""
COCO_OBTAIN = (
    "download train2014.zip, val2014.zip and annotations_trainval2014.zip from https://cocodataset.org/#download "
    "(http://images.cocodataset.org/zips/ and /annotations/) and unzip all three into <root>"
)


def coco_paths(root: str | Path, image_set: str) -> tuple[Path, Path]:
    """The image folder and instance-annotation file of ``image_set`` under ``root``."""
    root = Path(root)
    return root / image_set, root / "annotations" / f"instances_{image_set}.json"


def load_coco_index(root: str | Path, image_set: str) -> CocoDetection:
    """Loads (and indexes by image) the annotations of ``image_set``; checks the 80 standard categories.

    Raises:
        DatasetNotFoundError: the image folder or the annotation file is missing.
        ValueError: the annotation file's categories are not the 80 COCO categories.
    """
    if image_set not in COCO_IMAGE_SETS:
        raise ValueError(f"unknown COCO 2014 image set '{image_set}'; expected one of {COCO_IMAGE_SETS}")
    image_dir, ann_file = coco_paths(root, image_set)
    missing = [p for p in (ann_file, image_dir) if not p.exists()]
    if missing:
        raise DatasetNotFoundError(dataset_error("MS-COCO 2014", Path(root), missing, COCO_LAYOUT, COCO_OBTAIN))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        try:
            base = CocoDetection(str(image_dir), str(ann_file))
        except json.JSONDecodeError as err:
            raise ValueError(f"cannot parse COCO annotation file {ann_file}: {err}") from err
    found = {int(c["id"]): c["name"] for c in base.coco.dataset.get("categories", [])}
    expected = dict(COCO_CATEGORIES)
    if found != expected:
        diff = sorted(set(found.items()) ^ set(expected.items()))[:10]
        raise ValueError(
            f"{ann_file} does not hold the 80 COCO categories (differences, first 10: {diff}); "
            "for another class list use FolderDataModule"
        )
    return base


class COCO2014Dataset(AnnotatedImageDataset):
    """Images of one COCO 2014 image set (optionally a subset of its ids) as samples.

    Args:
        root: the COCO folder (``annotations/``, ``train2014/``, ``val2014/``).
        image_set: ``train2014`` or ``val2014``.
        image_ids: the image ids to use, in this order (default: every image of the set, sorted by id).
        masks: decode per-class segmentation masks.
        crowd_as_labels: let crowd annotations count as image labels (their boxes are flagged either way).
        transform: the :class:`~explainer.data.transforms.SampleTransform` (default: stretch to 224 px).
        skip_corrupt: skip corrupt images instead of raising.
        index: an already loaded index of ``image_set`` (shared between splits of one file).
    """

    def __init__(
        self,
        root: str | Path,
        image_set: COCOImageSet = "val2014",
        image_ids: Sequence[int] | None = None,
        masks: bool = True,
        crowd_as_labels: bool = True,
        transform: SampleTransform | None = None,
        skip_corrupt: bool = False,
        index: CocoDetection | None = None,
    ) -> None:
        super().__init__(transform, skip_corrupt)
        self.root = Path(root)
        self.image_set = image_set
        self.masks = masks
        self.crowd_as_labels = crowd_as_labels
        self.base = index if index is not None else load_coco_index(root, image_set)
        self.coco = self.base.coco
        self.image_dir = Path(self.base.root)
        if image_ids is None:
            self.ids = list(self.base.ids)
        else:
            self.ids = [int(i) for i in image_ids]
            unknown = [i for i in self.ids if i not in self.coco.imgs]
            if unknown:
                raise ValueError(
                    f"{len(unknown)} image ids are not in instances_{image_set}.json (first: {unknown[:5]})"
                )
        self.name = f"COCO {image_set}" + ("" if image_ids is None else f" ({len(self.ids)}-image subset)")

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> RawSample:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise DatasetNotFoundError(
                dataset_error(
                    "MS-COCO 2014",
                    self.root,
                    [path],
                    COCO_LAYOUT,
                    COCO_OBTAIN,
                    what=f"listed in instances_{self.image_set}.json but missing",
                )
            )
        image = self.read(path)
        height, width = image.shape[-2:]
        if (int(info["height"]), int(info["width"])) != (height, width):
            raise ValueError(
                f"{path} is {width}x{height} but instances_{self.image_set}.json says {info['width']}x{info['height']}"
            )
        anns = self.coco.imgToAnns.get(image_id, [])
        classes = torch.tensor([COCO_ID_TO_INDEX[int(a["category_id"])] for a in anns], dtype=torch.long)
        crowd = torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool)
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        labelled = classes if self.crowd_as_labels else classes[~crowd]
        masks = mask_classes = None
        if self.masks:
            masks, mask_classes = self._class_masks(anns, classes, height, width)
        return RawSample(
            image=image,
            labels=multi_hot(labelled, len(COCO_CLASSES)),
            boxes=boxes,
            box_labels=classes,
            difficult=crowd,
            masks=masks,
            mask_classes=mask_classes,
            id=str(image_id),
        )

    def _class_masks(
        self, anns: list[dict], classes: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per present class, the union of its instance masks (crowd regions included).

        The union is taken on the run-length encodings (``mask.merge``), so only one mask per present
        class is decoded, in one batched call.
        """
        by_class: dict[int, list] = {}
        for ann, cls in zip(anns, classes.tolist(), strict=True):
            if ann.get("segmentation"):
                by_class.setdefault(cls, []).append(self.coco.annToRLE(ann))
        if not by_class:
            return torch.zeros(0, height, width, dtype=torch.bool), torch.zeros(0, dtype=torch.long)
        mask_classes = sorted(by_class)
        merged = [mask_utils.merge(by_class[c], intersect=False) for c in mask_classes]
        decoded = mask_utils.decode(merged)  # [H, W, k] uint8 (Fortran order)
        return torch.from_numpy(decoded).permute(2, 0, 1), torch.tensor(mask_classes, dtype=torch.long)


class COCO2014DataModule(FileDataModule):
    """MS-COCO 2014 for training and evaluating classifiers and explainers.

    Splits: ``train`` is ``train2014``; ``val`` is a seeded ``val_fraction`` of ``train2014`` held out from
    training (or, with ``val_fraction=0``, ``val2014``); ``test`` is ``val2014`` (COCO's test images have
    no public annotations). ``val_size`` / ``test_size`` draw seeded subsets. Every drawn list of image ids
    is saved under ``splits_dir`` and read back on later runs.

    Args:
        root: the COCO folder (``annotations/``, ``train2014/``, ``val2014/``).
        val_fraction: fraction of ``train2014`` split off (seeded) as the validation set; 0 validates on
            ``val2014`` (which is also the test set).
        val_size: number of validation images to keep (seeded subset), or all.
        test_size: number of ``val2014`` test images to keep (seeded subset), or all.
        subset_seed: the seed of every drawn split and subset.
        splits_dir: folder for the saved id lists (``None``: draw with the seed but save nothing).
        train_masks: decode segmentation masks for training images too (validation and test always).
        crowd_as_labels: let crowd annotations count as image labels (their boxes are flagged either way).
        batch_size: images per batch (16 here).
        **kwargs: the common arguments of :class:`~explainer.data.base.FileDataModule` (``image_size``,
            ``resize``, ``augment``, ``skip_corrupt``, ``num_workers``, ``pin_memory``, ``mean``, ``std``).
    """

    def __init__(
        self,
        root: str = "data/coco",
        val_fraction: float = 0.05,
        val_size: int | None = None,
        test_size: int | None = None,
        subset_seed: int = 0,
        splits_dir: str | None = "data/splits",
        train_masks: bool = False,
        crowd_as_labels: bool = True,
        batch_size: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, **kwargs)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        for arg, value in (("val_size", val_size), ("test_size", test_size)):
            if value is not None and value < 1:
                raise ValueError(f"{arg} must be >= 1 or None, got {value}")
        self._indices: dict[str, CocoDetection] = {}

    @property
    def class_names(self) -> list[str]:
        return list(COCO_CLASSES)

    @property
    def category_ids(self) -> list[int]:
        """The raw COCO category id of each class index."""
        return [cat_id for cat_id, _ in COCO_CATEGORIES]

    # -- splits ----------------------------------------------------------------------------------------
    def _index(self, image_set: str) -> CocoDetection:
        if image_set not in self._indices:
            self._indices[image_set] = load_coco_index(self.root, image_set)
        return self._indices[image_set]

    def check_root(self, splits: Sequence[str]) -> None:
        """Every file of the image sets that ``splits`` read (``train2014`` and / or ``val2014``) must exist."""
        image_sets = {
            "train": {"train2014"},
            "test": {"val2014"},
            "val": {"train2014"} if self.hparams.val_fraction > 0 else {"val2014"},
        }
        needed = sorted(set().union(*(image_sets[s] for s in splits)))
        missing = [p for s in needed for p in coco_paths(self.root, s) if not p.exists()]
        if missing:
            raise DatasetNotFoundError(
                dataset_error("MS-COCO 2014", Path(self.root), missing, COCO_LAYOUT, COCO_OBTAIN)
            )

    def _draw(self, name: str, candidates: Sequence[int], count: int) -> list[int]:
        """A seeded subset of ``count`` ids, read from / saved to ``splits_dir`` as ``<name>.json``."""
        candidates = sorted(int(c) for c in candidates)
        if not 1 <= count <= len(candidates):
            raise ValueError(f"cannot draw {count} images for {name} from {len(candidates)}")
        path = Path(self.hparams.splits_dir) / f"{name}.json" if self.hparams.splits_dir else None
        if path is not None and path.is_file():
            saved = [int(i) for i in json.loads(path.read_text())["image_ids"]]
            if len(saved) != count or not set(saved) <= set(candidates):
                raise ValueError(
                    f"the saved id list {path} does not fit this dataset ({len(saved)} ids, "
                    f"expected {count} from {len(candidates)} candidates); delete it or set "
                    "another splits_dir"
                )
            return saved
        rng = np.random.default_rng(self.hparams.subset_seed)
        ids = sorted(int(i) for i in rng.choice(np.asarray(candidates), size=count, replace=False))
        if path is not None:
            _save_new(
                path,
                {
                    "name": name,
                    "seed": self.hparams.subset_seed,
                    "count": count,
                    "drawn_from": len(candidates),
                    "image_ids": ids,
                },
            )
        return ids

    def split_ids(self, split: str) -> tuple[str, list[int] | None]:
        """The image set and ids of ``split`` (``None`` ids: the whole set)."""
        seed, frac = self.hparams.subset_seed, self.hparams.val_fraction
        held_out: list[int] | None = None
        if frac > 0 and split in ("train", "val"):
            all_train = self._index("train2014").ids
            count = max(1, round(frac * len(all_train)))
            if count >= len(all_train):
                raise ValueError(f"val_fraction={frac} leaves no training images out of {len(all_train)}")
            held_out = self._draw(f"coco2014_val-from-train2014_frac{frac:g}_seed{seed}", all_train, count)
        if split == "train":
            if held_out is None:
                return "train2014", None
            out = set(held_out)
            return "train2014", [i for i in self._index("train2014").ids if i not in out]
        if split == "val":
            image_set, ids = ("train2014", held_out) if held_out is not None else ("val2014", None)
            size = self.hparams.val_size
            if size is not None:
                pool = ids if ids is not None else self._index(image_set).ids
                source = f"train2014-frac{frac:g}" if held_out is not None else "val2014"
                ids = self._draw(f"coco2014_val-subset_{source}_n{size}_seed{seed}", pool, min(size, len(pool)))
            return image_set, ids
        if split == "test":
            size = self.hparams.test_size
            if size is None:
                return "val2014", None
            pool = self._index("val2014").ids
            return "val2014", self._draw(f"coco2014_test_val2014_n{size}_seed{seed}", pool, min(size, len(pool)))
        raise ValueError(f"unknown split '{split}'")

    def make_dataset(self, split: str) -> COCO2014Dataset:
        """The dataset of ``split`` (``train``, ``val`` or ``test``) with this module's settings."""
        image_set, ids = self.split_ids(split)
        return COCO2014Dataset(
            self.root,
            image_set,
            ids,
            masks=split != "train" or self.hparams.train_masks,
            crowd_as_labels=self.hparams.crowd_as_labels,
            transform=self.transform(split),
            skip_corrupt=self.skip_corrupt,
            index=self._index(image_set),
        )


def _save_new(path: Path, content: dict) -> None:
    """Writes ``content`` as JSON to ``path`` unless it exists (atomic; never overwrites another writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(content, f)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process saved the same deterministic list first
        except OSError:  # no hard links on this file system
            if not path.exists():
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


__all__ = ["COCO2014DataModule", "COCO2014Dataset", "COCO_IMAGE_SETS", "coco_paths", "load_coco_index"]
