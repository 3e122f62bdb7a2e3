"""explainer: learned explainers of image classifiers on PyTorch Lightning."""

__version__ = "0.1.0"
