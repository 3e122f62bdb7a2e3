"""Grid datasets for the controlled localisation protocols (GridPG, DiFull, DiPart; Rao et al., CVPR 2022).

A grid is an ``n x n`` mosaic (default 2x2) of images of distinct classes taken from any data module's
split, each one an image the classifier gets right with confidence at least ``confidence`` (0.99 by
default; relaxed step by step, with a warning, when too few classes qualify). For DiFull and DiPart the
bottom-right cell repeats the top-left class (with another image of it when there is one), the case
where a method that lights up every instance of a class fails.

Only single-label source images can fill a cell (their one class is the cell's class). On digit scenes,
use a source with ``min_digits=max_digits=1``: every cell is then a single-digit scene
(``configs/data/digit_grids.yaml``).

Samples follow the project's conventions (:class:`~explainer.data.batch.Sample`): ``boxes`` are the
cells in row-major order (box ``j`` is cell ``j``), ``box_labels`` the label index explained for each
cell and ``labels`` the multi-hot vector of those indices. The label space depends on the protocol:
the source classes for ``gridpg``; ``n^2 x C`` per-cell classes for ``difull`` and ``dipart``, where
index ``i * C + c`` (named ``cell<i>:<name>``) is class ``c`` in cell ``i``, matching the logits of
:mod:`explainer.protocols.wrappers`. Grid ``g`` of a split is a pure function of
``(seed, split, g)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from explainer.classifiers.frozen import FrozenClassifier
from explainer.data.base import ExplainerDataModule
from explainer.data.batch import Batch, Sample, collate
from explainer.protocols.base import Protocol, get_protocol

RELAXED_CONFIDENCES = (0.95, 0.9, 0.8, 0.7, 0.5)
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclass
class Candidates:
    """The source images that may fill a cell: index, class and the classifier's confidence, per image."""

    index: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    threshold: float

    def per_class(self, num_classes: int) -> list[np.ndarray]:
        """Source indices of each class's qualifying images."""
        keep = self.confidence >= self.threshold
        return [self.index[keep & (self.label == c)] for c in range(num_classes)]


@torch.no_grad()
def score_source(
    dataset: Dataset, classifier: torch.nn.Module, batch_size: int = 128, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The single-label images of ``dataset`` that the classifier gets right, and its confidence on each.

    Returns:
        Source indices, their class, and the sigmoid probability of that class (``[m]`` each). An image
        counts as right when its one label is the arg-max of the logits.
    """
    indices, labels, confidences = [], [], []
    was_training = classifier.training
    classifier.eval()
    try:
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collate(samples)
            single = batch.labels.sum(1) == 1
            if not bool(single.any()):
                continue
            logits = classifier(batch.image.to(device)).float().cpu()
            label = batch.labels.argmax(1)
            right = single & (logits.argmax(1) == label)
            prob = torch.sigmoid(logits.gather(1, label[:, None]))[:, 0]
            where = torch.nonzero(right)[:, 0]
            indices.append(where + start)
            labels.append(label[where])
            confidences.append(prob[where])
    finally:
        classifier.train(was_training)
    if not indices:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (torch.cat(indices).numpy(), torch.cat(labels).numpy(), torch.cat(confidences).numpy())


def choose_threshold(
    labels: np.ndarray,
    confidences: np.ndarray,
    num_classes: int,
    cells: int,
    repeat: bool,
    confidence: float,
    min_images_per_class: int = 2,
    split: str = "",
) -> float:
    """The confidence threshold: ``confidence`` if enough classes qualify, else the first relaxed value that
    gives ``cells`` classes with ``min_images_per_class`` images each (warning), else an error."""
    needed = cells - 1 if repeat else cells
    tried = [confidence, *[c for c in RELAXED_CONFIDENCES if c < confidence]]
    for threshold in tried:
        counts = np.bincount(labels[confidences >= threshold], minlength=num_classes)
        enough = int((counts >= min_images_per_class).sum())
        repeatable = int((counts >= 2).sum()) >= 1 or not repeat
        if enough >= needed and repeatable:
            if threshold < confidence:
                strict = np.bincount(labels[confidences >= confidence], minlength=num_classes)
                warnings.warn(
                    f"grid {split} split: only {int((strict >= min_images_per_class).sum())} classes have "
                    f"{min_images_per_class} images classified with confidence >= {confidence}; relaxed the "
                    f"threshold to {threshold} ({enough} classes qualify)",
                    stacklevel=2,
                )
            return threshold
    raise ValueError(
        f"grid {split} split: fewer than {needed} classes have {min_images_per_class} correctly classified "
        f"single-label images even at confidence {tried[-1]}; a {int(round(cells**0.5))}x{int(round(cells**0.5))} "
        "grid needs that many distinct classes (use a larger source split or a better classifier)"
    )


class GridDataset(Dataset):
    """``n x n`` grids of confidently classified images of distinct classes (see the module docstring).

    Args:
        source: the split the cells come from (its samples are single-label images of one size).
        candidates: the qualifying images of ``source`` (:func:`score_source` plus a threshold).
        class_names: the source's class names.
        num_grids: grids in the split.
        grid_size: ``n``.
        protocol: the protocol or its name (``gridpg``: distinct classes; ``difull`` / ``dipart``: the
            bottom-right cell repeats the top-left class).
        seed: the grid seed.
        split: the split's name (part of the seed and of the ids).
    """

    def __init__(
        self,
        source: Dataset,
        candidates: Candidates,
        class_names: Sequence[str],
        num_grids: int,
        grid_size: int = 2,
        protocol: str | Protocol = "gridpg",
        seed: int = 0,
        split: str = "test",
    ) -> None:
        self.spec = get_protocol(protocol)
        if num_grids < 1:
            raise ValueError(f"num_grids must be >= 1, got {num_grids}")
        self.source = source
        self.class_names = list(class_names)
        self.base_classes = len(self.class_names)
        self.num_grids = int(num_grids)
        self.grid_size = self.spec.check_grid_size(grid_size)
        self.protocol = self.spec.name
        self.repeat = self.spec.repeats
        self.seed = int(seed)
        self.split = split
        self.pool = candidates.per_class(self.base_classes)
        self.usable = [c for c, idx in enumerate(self.pool) if len(idx) > 0]
        needed = self.spec.distinct_classes(self.grid_size)
        if len(self.usable) < needed:
            raise ValueError(
                f"a {grid_size}x{grid_size} grid needs {needed} classes with qualifying images, "
                f"only {len(self.usable)} have any"
            )
        self.repeatable = [c for c in self.usable if len(self.pool[c]) >= 2] if self.repeat else self.usable
        if not self.repeatable:
            raise ValueError("no class has two qualifying images to repeat in the bottom-right cell")

    def __len__(self) -> int:
        return self.num_grids

    @property
    def label_names(self) -> list[str]:
        """Names of the label space (per-cell classes for DiFull / DiPart)."""
        return self.spec.class_names(self.class_names, self.grid_size)

    def layout(self, index: int) -> tuple[list[int], list[int]]:
        """The cell classes and the source indices of grid ``index``, in row-major cell order."""
        if not 0 <= index < self.num_grids:
            raise IndexError(f"grid {index} out of range for a split of {self.num_grids}")
        rng = np.random.default_rng((self.seed, _SPLIT_CODE.get(self.split, 3), index))
        cells = self.grid_size**2
        if self.repeat:
            first = int(rng.choice(self.repeatable))
            others = [c for c in self.usable if c != first]
            middle = [int(c) for c in rng.choice(others, cells - 2, replace=False)] if cells > 2 else []
            classes = [first, *middle, first]
            pair = rng.choice(self.pool[first], 2, replace=False)
            images = [int(pair[0]), *[int(rng.choice(self.pool[c])) for c in middle], int(pair[1])]
        else:
            classes = [int(c) for c in rng.choice(self.usable, cells, replace=False)]
            images = [int(rng.choice(self.pool[c])) for c in classes]
        return classes, images

    def __getitem__(self, index: int) -> Sample:
        classes, sources = self.layout(index)
        cells = [self.source[i].image for i in sources]
        size = cells[0].shape[-2:]
        cells = [
            c
            if c.shape[-2:] == size
            else F.interpolate(c[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
            for c in cells
        ]
        n = self.grid_size
        rows = [torch.cat(cells[r * n : (r + 1) * n], dim=2) for r in range(n)]
        image = torch.cat(rows, dim=1)
        h, w = int(size[0]), int(size[1])
        boxes = torch.tensor(
            [[(i % n) * w, (i // n) * h, (i % n + 1) * w, (i // n + 1) * h] for i in range(n * n)], dtype=torch.float32
        )
        label_index = [self.spec.label_index(i, c, self.base_classes) for i, c in enumerate(classes)]
        labels = torch.zeros(self.spec.num_labels(self.base_classes, n))
        labels[label_index] = 1.0
        return Sample(
            image=image,
            labels=labels,
            boxes=boxes,
            box_labels=torch.tensor(label_index),
            difficult=torch.zeros(n * n, dtype=torch.bool),
            id=f"{self.split}-grid{index:05d}",
            orig_size=(n * h, n * w),
        )


def grid_targets(batch: Batch, protocol: str | Protocol, grid_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The explained label indices ``[B, K]`` and their cells ``[B, K]`` of a batch of grids."""
    if batch.box_labels is None:
        raise ValueError("the batch holds no grid cells (box_labels); build it with GridDataModule")
    cells = get_protocol(protocol).scored_cells(grid_size)
    labels = torch.stack([b[cells] for b in batch.box_labels]).long().to(batch.image.device)
    return labels, torch.tensor(cells, device=labels.device).expand(len(labels), -1)


class GridDataModule(ExplainerDataModule):
    """Grids of another data module's images, for GridPG, DiFull and DiPart.

    Args:
        source: the data module the cells come from (single-label images; for digit scenes one digit each).
        classifier: the ``ClassifierModule`` checkpoint that must classify every cell image correctly.
        protocol: ``gridpg``, ``difull`` or ``dipart`` (sets the label space and the repeated class).
        grid_size: ``n`` of the ``n x n`` grids.
        confidence: the classifier's least confidence on a cell image (relaxed with a warning if needed).
        min_images_per_class: qualifying images a class needs before the threshold is relaxed.
        train_grids: grids in the training split.
        val_grids: grids in the validation split.
        test_grids: grids in the test split.
        seed: the grid seed.
        batch_size: grids per batch.
        num_workers: loader worker processes.
        pin_memory: pin host memory (default: when CUDA is available).
    """

    hparams_ignore = ("source",)

    def __init__(
        self,
        source: ExplainerDataModule,
        classifier: str,
        protocol: str = "gridpg",
        grid_size: int = 2,
        confidence: float = 0.99,
        min_images_per_class: int = 2,
        train_grids: int = 2000,
        val_grids: int = 200,
        test_grids: int = 200,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, mean=source.mean, std=source.std
        )
        self.spec = get_protocol(protocol)
        self.spec.check_grid_size(grid_size)
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        if grid_size**2 > source.num_classes:
            raise ValueError(
                f"a {grid_size}x{grid_size} grid needs {grid_size**2} distinct classes; the source "
                f"has {source.num_classes}"
            )
        self.source = source
        self.classifier_path = classifier
        self.protocol = protocol
        self.grid_size = int(grid_size)
        self.confidence = float(confidence)
        self.min_images_per_class = int(min_images_per_class)
        self.seed = int(seed)
        self._sizes = {"train": train_grids, "val": val_grids, "test": test_grids}
        self._classifier: torch.nn.Module | None = None
        self.thresholds: dict[str, float] = {}

    @property
    def class_names(self) -> list[str]:
        names = self.source.class_names
        return self.spec.class_names(names, self.grid_size)

    @property
    def source_classes(self) -> int:
        """``C``, the source's class count."""
        return self.source.num_classes

    def classifier(self) -> torch.nn.Module:
        """The frozen classifier that vets the cell images (loaded once)."""
        if self._classifier is None:
            self._classifier = FrozenClassifier.from_checkpoint(
                self.classifier_path, num_classes=self.source.num_classes
            )
        return self._classifier

    def make_dataset(self, split: str) -> GridDataset:
        """The grid dataset of ``split`` (scores the source split with the classifier first)."""
        self.source.setup("fit" if split in ("train", "val") else "test")
        dataset = self.source._dataset(split)
        index, label, conf = score_source(dataset, self.classifier())
        threshold = choose_threshold(
            label,
            conf,
            self.source_classes,
            self.grid_size**2,
            self.spec.repeats,
            self.confidence,
            self.min_images_per_class,
            split,
        )
        self.thresholds[split] = threshold
        return GridDataset(
            dataset,
            Candidates(index, label, conf, threshold),
            self.source.class_names,
            self._sizes[split],
            self.grid_size,
            self.protocol,
            self.seed,
            split,
        )


__all__ = [
    "Candidates",
    "GridDataModule",
    "GridDataset",
    "choose_threshold",
    "grid_targets",
    "score_source",
]
