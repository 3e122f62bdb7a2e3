"""The base class of every data module: class list, normalisation and loaders in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from explainer.data.batch import Batch, collate
from explainer.data.files import DECODERS, AnnotatedImageDataset, Decoder
from explainer.data.loader import SkipReportingLoader
from explainer.data.sampling import EpochShuffle, ResumableLoader, evaluation_sampler, run_seed
from explainer.data.transforms import ResizeMode, SampleTransform
from explainer.ops import IMAGENET_MEAN, IMAGENET_STD, denormalize


class ExplainerDataModule(pl.LightningDataModule):
    """The base of every data module: loaders, splits and normalisation.

    A data module defines :attr:`class_names` and :meth:`make_dataset` (the dataset of one split); the
    base builds the splits a Lightning stage needs in :meth:`setup`, after one call of the
    :meth:`check_root` hook, and serves every loader (each yields :class:`~explainer.data.batch.Batch`).
    A subclass takes its own arguments, lists the common ones whose default it changes, and passes the
    rest on with ``**kwargs``: ``--help`` shows them all, documented here.

    Args:
        batch_size: images per batch.
        num_workers: loader worker processes (0 loads in the main process).
        pin_memory: pin host memory; ``None`` pins when CUDA is available.
        mean: per-channel normalisation mean (images are normalised with it, so 0 is the mean colour).
        std: per-channel normalisation standard deviation.
    """

    hparams_ignore: tuple[str, ...] = ()
    """Constructor arguments left out of ``hparams`` (objects, not settings)."""

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        # every argument of every __init__ in the chain (this frame and the subclasses' above it)
        self.save_hyperparameters(ignore=list(self.hparams_ignore))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got mean={mean!r}, std={std!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.datasets: dict[str, Dataset] = {}

    # -- what every data module tells the models -------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """The class names, in label-index order."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """The number of classes (the width of ``Batch.labels``)."""
        return len(self.class_names)

    def denormalize(self, image: torch.Tensor) -> torch.Tensor:
        """Maps normalised images ``[..., 3, H, W]`` back to ``[0, 1]`` RGB."""
        return denormalize(image, self.mean, self.std)

    # -- splits ------------------------------------------------------------------------------------------
    STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
    """The splits each Lightning stage needs (an unknown or no stage: all three)."""

    @classmethod
    def splits_for(cls, stage: str | None) -> tuple[str, ...]:
        """The splits that ``setup(stage)`` builds."""
        return cls.STAGE_SPLITS.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test")

    def make_dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (``train``, ``val`` or ``test``); every data module defines it."""
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        """Whether this module is configured with ``split`` (all three unless a subclass says otherwise)."""
        return True

    def check_root(self, splits: Sequence[str]) -> None:
        """Raises a :class:`~explainer.data.files.DatasetNotFoundError` naming every missing file that ``splits``
        need, before any is read; a module whose data is on disk overrides it."""

    def setup(self, stage: str | None = None) -> None:
        """Builds the datasets of the stage's splits that are not built yet, after :meth:`check_root`."""
        splits = [s for s in self.splits_for(stage) if s not in self.datasets and self.has_split(s)]
        if splits:
            self.check_root(splits)
        for split in splits:
            self.datasets[split] = self.make_dataset(split)

    def _dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            self.setup("fit" if split in ("train", "val") else "test")
        if split not in self.datasets:
            raise RuntimeError(f"{type(self).__name__} has no '{split}' split")
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader[Batch]:
        dataset = self._dataset(split)
        options = {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
            "collate_fn": collate,
            "drop_last": False,
        }
        if shuffle:
            sampler = EpochShuffle(len(dataset), self.batch_size, run_seed(), completed=self._completed_batches)
            return ResumableLoader(dataset, sampler=sampler, **options)
        # a generator of its own: creating the loader's iterator draws nothing from the global RNG; under
        # DDP unpadded shards, so that every sample is scored once
        return SkipReportingLoader(
            dataset, sampler=evaluation_sampler(dataset), generator=torch.Generator().manual_seed(run_seed()), **options
        )

    def _completed_batches(self) -> int:
        """Batches of the current training epoch already done (a resumed run continues after them)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.training:  # outside a fit's training loop: the whole epoch
            return 0
        if trainer.world_size > 1:  # Lightning's distributed wrapper shards the order: restart the epoch's
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    def train_dataloader(self) -> DataLoader[Batch]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[Batch]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Batch]:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader[Batch]:
        return self._loader("test")


class FileDataModule(ExplainerDataModule):
    """The base of the data modules that read image files under a root folder (VOC, COCO, CUB, folders).

    Args:
        root: the dataset's folder.
        image_size: side of the square images in pixels.
        resize: ``stretch`` (the published ``Resize((224, 224))``) or ``shorter_crop``.
        augment: random flip, small rotation and colour jitter on the training split.
        skip_corrupt: skip corrupt images (counted in a warning per pass) instead of raising.
        num_workers: loader worker processes (0 loads in the main process). Each worker decodes and resizes
            on one core; ``benchmarks/data_loading.py`` gives images per second per worker, so that the number
            needed to feed a GPU is its images per second divided by that (docs/performance.md).
        decoder: the JPEG decoder, ``pil`` (Pillow) or ``torchvision`` (``decode_jpeg``, faster per worker;
            other formats still go through Pillow). Same pixels; see :func:`~explainer.data.files.read_image`.
        **kwargs: the other arguments of :class:`ExplainerDataModule` (``batch_size``, ``pin_memory``,
            ``mean``, ``std``).
    """

    def __init__(
        self,
        root: str = "data",
        image_size: int = 224,
        resize: ResizeMode = "stretch",
        augment: bool = False,
        skip_corrupt: bool = False,
        num_workers: int = 4,
        decoder: Decoder = "pil",
        **kwargs: Any,
    ) -> None:
        super().__init__(num_workers=num_workers, **kwargs)
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder='{decoder}' is not an image decoder; expected one of {DECODERS}")
        self.decoder = decoder
        self.root = root
        self.image_size = image_size
        self.resize = resize
        self.augment = augment
        self.skip_corrupt = skip_corrupt

    def setup(self, stage: str | None = None) -> None:
        """Builds the stage's datasets (see :meth:`ExplainerDataModule.setup`), each decoding with :attr:`decoder`."""
        super().setup(stage)
        for dataset in self.datasets.values():
            if isinstance(dataset, AnnotatedImageDataset):
                dataset.decoder = self.decoder

    def transform(self, split: str) -> SampleTransform:
        """The transform of ``split``: resize and normalise, with augmentation on ``train`` when asked."""
        return SampleTransform(
            self.image_size, self.resize, self.augment and split == "train", mean=self.mean, std=self.std
        )
