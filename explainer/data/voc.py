"""PASCAL VOC 2007: multi-label classification with boxes, difficult flags and segmentation masks.

Built on torchvision's ``VOCDetection`` (image lists and the XML parser) and ``VOCSegmentation`` (which
images of a split have a ``SegmentationClass`` PNG). Ground-truth conventions:

* labels: multi-hot over the 20 classes in the standard order (:data:`~explainer.data.labels.VOC_CLASSES`),
  duplicates counted once; difficult objects count as labels unless ``difficult_as_labels=False``;
* boxes: the XML's 1-based inclusive pixel coordinates become 0-based ``(x0, y0, x1, y1)`` with ``x1`` /
  ``y1`` exclusive: ``(xmin - 1, ymin - 1, xmax, ymax)``; every box keeps its ``difficult`` flag;
* masks: for the images with a segmentation PNG, class ``i`` is value ``i + 1``; the void band (255) is
  ignored, i.e. foreground of no class (a known defect of the original code counted it as foreground);
  masks are resized nearest-neighbour; images without segmentation have ``masks=None``.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Literal

import torch
from torchvision.datasets import VOCDetection, VOCSegmentation

from explainer.data.base import FileDataModule
from explainer.data.files import (
    AnnotatedImageDataset,
    DatasetNotFoundError,
    dataset_error,
    label_map_masks,
    read_label_map,
)
from explainer.data.labels import VOC_CLASSES, VOC_VOID, class_lookup, multi_hot
from explainer.data.transforms import RawSample, SampleTransform

log = logging.getLogger(__name__)

VOCImageSet = Literal["train", "val", "trainval", "test"]
VOC_IMAGE_SETS: tuple[str, ...] = ("train", "val", "trainval", "test")
VOC_LAYOUT = """<root>/VOCdevkit/VOC2007/JPEGImages/<id>.jpg
<root>/VOCdevkit/VOC2007/Annotations/<id>.xml
<root>/VOCdevkit/VOC2007/ImageSets/Main/{train,val,trainval,test}.txt
<root>/VOCdevkit/VOC2007/ImageSets/Segmentation/<set>.txt    (optional: which images have masks)
<root>/VOCdevkit/VOC2007/SegmentationClass/<id>.png          (optional: class-index masks)"""
VOC_OBTAIN = (
    "download VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar from "
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/ and extract both into <root> (they share "
    "VOCdevkit/VOC2007), or set download=True where the network allows it"
)
_CLASS_INDEX = class_lookup(VOC_CLASSES)


def resolve_voc_root(root: str | Path) -> Path:
    """The folder that holds ``VOCdevkit`` (torchvision's ``root``), also when given ``VOCdevkit`` or ``VOC2007``.

    Args:
        root: the configured root.

    Returns:
        The parent of ``VOCdevkit``.
    """
    root = Path(root)
    if (root / "VOCdevkit").is_dir():
        return root
    if root.name == "VOCdevkit" and (root / "VOC2007").is_dir():
        return root.parent
    if root.name == "VOC2007" and root.parent.name == "VOCdevkit":
        return root.parent.parent
    return root


class VOC2007Dataset(AnnotatedImageDataset):
    """One image set of VOC 2007 as :class:`~explainer.data.batch.Sample` objects.

    Args:
        root: the folder holding ``VOCdevkit/VOC2007`` (``VOCdevkit`` or ``VOC2007`` itself also work).
        image_set: ``train``, ``val``, ``trainval`` or ``test``.
        difficult_as_labels: count difficult objects as image labels (boxes keep their flag either way).
        segmentation: load class masks for the images listed in ``ImageSets/Segmentation/<image_set>.txt``.
        transform: the :class:`~explainer.data.transforms.SampleTransform` (default: stretch to 224 px).
        skip_corrupt: skip corrupt images instead of raising (see :class:`AnnotatedImageDataset`).

    Raises:
        DatasetNotFoundError: the root, the image list, or any listed image / annotation file is missing.
    """

    def __init__(
        self,
        root: str | Path,
        image_set: VOCImageSet = "test",
        difficult_as_labels: bool = True,
        segmentation: bool = True,
        transform: SampleTransform | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        super().__init__(transform, skip_corrupt)
        if image_set not in VOC_IMAGE_SETS:
            raise ValueError(f"unknown VOC 2007 image set '{image_set}'; expected one of {VOC_IMAGE_SETS}")
        self.root = Path(root)
        self.tv_root = resolve_voc_root(root)
        self.image_set = image_set
        self.difficult_as_labels = difficult_as_labels
        self.name = f"VOC2007 {image_set}"
        voc = self.tv_root / "VOCdevkit" / "VOC2007"
        required = [voc / "JPEGImages", voc / "Annotations", voc / "ImageSets" / "Main" / f"{image_set}.txt"]
        missing = [p for p in required if not p.exists()]
        if missing:
            raise DatasetNotFoundError(dataset_error("PASCAL VOC 2007", self.root, missing, VOC_LAYOUT, VOC_OBTAIN))
        detection = VOCDetection(str(self.tv_root), year="2007", image_set=image_set, download=False)
        self.images = [Path(p) for p in detection.images]
        self.annotations = [Path(p) for p in detection.annotations]
        self.ids = [p.stem for p in self.images]
        incomplete = [p for pair in zip(self.images, self.annotations, strict=True) for p in pair if not p.is_file()]
        if incomplete:
            raise DatasetNotFoundError(
                dataset_error(
                    "PASCAL VOC 2007",
                    self.root,
                    incomplete,
                    VOC_LAYOUT,
                    VOC_OBTAIN,
                    what=f"listed in ImageSets/Main/{image_set}.txt but missing",
                )
            )
        self.mask_paths: list[Path | None] = [None] * len(self.ids)
        seg_list = voc / "ImageSets" / "Segmentation" / f"{image_set}.txt"
        if segmentation and seg_list.is_file():
            seg = VOCSegmentation(str(self.tv_root), year="2007", image_set=image_set, download=False)
            by_id = {Path(m).stem: Path(m) for m in seg.masks}
            self.mask_paths = [by_id.get(i) for i in self.ids]
            absent = [p for p in self.mask_paths if p is not None and not p.is_file()]
            if absent:
                raise DatasetNotFoundError(
                    dataset_error(
                        "PASCAL VOC 2007",
                        self.root,
                        absent,
                        VOC_LAYOUT,
                        VOC_OBTAIN,
                        what=f"listed in ImageSets/Segmentation/{image_set}.txt but missing",
                    )
                )
        elif segmentation:
            log.info("%s: no %s, so no segmentation masks", self.name, seg_list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_with_masks(self) -> int:
        """How many images of the set have a segmentation mask."""
        return sum(p is not None for p in self.mask_paths)

    def parse_annotation(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The boxes (0-based, exclusive ends), class indices and difficult flags of item ``index``."""
        path = self.annotations[index]
        try:
            tree = VOCDetection.parse_voc_xml(ET.parse(path).getroot())
        except ET.ParseError as err:
            raise ValueError(f"cannot parse VOC annotation {path}: {err}") from err
        objects = tree.get("annotation", {}).get("object", [])
        objects = [objects] if isinstance(objects, dict) else objects
        boxes, classes, difficult = [], [], []
        for obj in objects:
            name = obj.get("name", "")
            if name not in _CLASS_INDEX:
                raise ValueError(f"unknown VOC class '{name}' in {path}; expected one of {list(VOC_CLASSES)}")
            try:
                bb = obj["bndbox"]
                xmin, ymin, xmax, ymax = (float(bb[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"object '{name}' in {path} has no valid bndbox: {err}") from err
            boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))  # 1-based inclusive -> 0-based exclusive
            classes.append(_CLASS_INDEX[name])
            difficult.append(str(obj.get("difficult", "0")).strip() == "1")
        return (
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(classes, dtype=torch.long),
            torch.tensor(difficult, dtype=torch.bool),
        )

    def load(self, index: int) -> RawSample:
        image = self.read(self.images[index])
        boxes, classes, difficult = self.parse_annotation(index)
        labelled = classes if self.difficult_as_labels else classes[~difficult]
        masks = mask_classes = None
        if self.mask_paths[index] is not None:
            masks, mask_classes = self._masks(self.mask_paths[index], tuple(image.shape[-2:]))
        return RawSample(
            image=image,
            labels=multi_hot(labelled, len(VOC_CLASSES)),
            boxes=boxes,
            box_labels=classes,
            difficult=difficult,
            masks=masks,
            mask_classes=mask_classes,
            id=self.ids[index],
        )

    @staticmethod
    def _masks(path: Path, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        label_map = read_label_map(path)
        if label_map.shape != size:
            raise ValueError(
                f"segmentation {path} is {label_map.shape[1]}x{label_map.shape[0]} but its image is {size[1]}x{size[0]}"
            )
        return label_map_masks(label_map, len(VOC_CLASSES), VOC_VOID, source=f"segmentation {path}")


class VOC2007DataModule(FileDataModule):
    """PASCAL VOC 2007 for training and evaluating classifiers and explainers.

    ``fit`` uses ``train_split`` / ``val_split``, ``test`` and ``predict`` use ``test_split`` (VOC 2007's test
    set has segmentation masks for 210 images; the pointing game uses its boxes). Choosing
    ``train_split="trainval"`` trains on both halves; then validate on a different set or accept the overlap.

    Args:
        root: the folder holding ``VOCdevkit/VOC2007`` (``VOCdevkit`` or ``VOC2007`` itself also work).
        train_split: image set for training.
        val_split: image set for validation.
        test_split: image set for testing and prediction.
        difficult_as_labels: count difficult objects as labels (boxes always keep their difficult flag).
        segmentation: load class masks where ``ImageSets/Segmentation/<set>.txt`` lists the image.
        download: let torchvision download the missing VOC 2007 archives into ``root`` in ``prepare_data``.
        batch_size: images per batch (16 here).
        **kwargs: the common arguments of :class:`~explainer.data.base.FileDataModule` (``image_size``,
            ``resize``, ``augment``, ``skip_corrupt``, ``num_workers``, ``pin_memory``, ``mean``, ``std``).
    """

    def __init__(
        self,
        root: str = "data/voc",
        train_split: VOCImageSet = "train",
        val_split: VOCImageSet = "val",
        test_split: VOCImageSet = "test",
        difficult_as_labels: bool = True,
        segmentation: bool = True,
        download: bool = False,
        batch_size: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, **kwargs)
        for arg, value in (("train_split", train_split), ("val_split", val_split), ("test_split", test_split)):
            if value not in VOC_IMAGE_SETS:
                raise ValueError(f"{arg}='{value}' is not a VOC 2007 image set; expected one of {VOC_IMAGE_SETS}")
        self.image_sets = {"train": train_split, "val": val_split, "test": test_split}

    @property
    def class_names(self) -> list[str]:
        return list(VOC_CLASSES)

    def prepare_data(self) -> None:
        if not self.hparams.download:
            return
        voc = resolve_voc_root(self.root) / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
        # one archive per group of image sets; only fetched (and extracted) when its list file is absent
        for archive_set in ("trainval", "test"):
            wanted = [s for s in set(self.image_sets.values()) if (s == "test") == (archive_set == "test")]
            if wanted and not all((voc / f"{s}.txt").is_file() for s in wanted):
                VOCDetection(str(resolve_voc_root(self.root)), year="2007", image_set=archive_set, download=True)

    def make_dataset(self, split: str) -> VOC2007Dataset:
        """The dataset of ``split`` (``train``, ``val`` or ``test``) with this module's settings."""
        return VOC2007Dataset(
            self.root,
            self.image_sets[split],
            self.hparams.difficult_as_labels,
            self.hparams.segmentation,
            self.transform(split),
            self.skip_corrupt,
        )


__all__ = ["VOC2007DataModule", "VOC2007Dataset", "VOC_IMAGE_SETS", "resolve_voc_root"]
