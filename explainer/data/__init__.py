"""Data: the typed batch, the data modules (digit scenes, VOC 2007, COCO 2014, CUB-200-2011, custom folders) and
transforms. The grids of the localisation protocols are in :mod:`explainer.protocols`."""

from explainer.data.base import ExplainerDataModule
from explainer.data.batch import Batch, Sample, collate
from explainer.data.coco import COCO2014DataModule, COCO2014Dataset
from explainer.data.cub import CUB200DataModule, CUB200Dataset
from explainer.data.digits import DigitScenes, DigitScenesDataModule
from explainer.data.files import AnnotatedImageDataset, CorruptImageError, DatasetNotFoundError, read_image
from explainer.data.folder import FolderDataModule, FolderDataset
from explainer.data.labels import COCO_CATEGORIES, COCO_CLASSES, VOC_CLASSES, multi_hot
from explainer.data.loader import SkipReportingLoader
from explainer.data.transforms import RawSample, SampleTransform
from explainer.data.voc import VOC2007DataModule, VOC2007Dataset
from explainer.ops import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "COCO2014DataModule",
    "COCO2014Dataset",
    "CUB200DataModule",
    "CUB200Dataset",
    "COCO_CATEGORIES",
    "COCO_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VOC2007DataModule",
    "VOC2007Dataset",
    "VOC_CLASSES",
    "AnnotatedImageDataset",
    "Batch",
    "CorruptImageError",
    "DatasetNotFoundError",
    "DigitScenes",
    "DigitScenesDataModule",
    "ExplainerDataModule",
    "FolderDataModule",
    "FolderDataset",
    "RawSample",
    "Sample",
    "SampleTransform",
    "SkipReportingLoader",
    "collate",
    "multi_hot",
    "read_image",
]
