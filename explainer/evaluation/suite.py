"""The metric suite: one table of metric specs, shared by ``evaluate.py`` and the validation callbacks.

A :class:`MetricSpec` says what a metric group needs from the batch (ground truth, boxes, grid cells), how
its :class:`torchmetrics.Metric` is built, what it is fed (the raw maps, the maps in [0, 1], the masks of
every class), which ``compute()`` keys become rows and whether higher is better. Both the validation
callback (:class:`~explainer.callbacks.ExplainerMetrics`) and the evaluation module
(:class:`~explainer.evaluation.module.AttributionEvaluation`) build their metrics with :func:`build_suite`
and feed them with :meth:`MetricSpec.feed`, so the same maps and batches give the same values under the
same names (``<group>.<key>``, e.g. ``pointing_game.accuracy``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from explainer.data.batch import Batch
from explainer.metrics import (
    ClassSpecificity,
    EncodingCheck,
    EnergyPointingGame,
    InsertionDeletion,
    LocalisationScore,
    PointingGame,
    SaliencyMetric,
    SegmentationMetrics,
    normalize_maps,
)


@dataclass
class EvaluationSettings:
    """How methods are evaluated.

    Args:
        metrics: metric groups (names of :data:`SPECS`).
        targets: explain the ground-truth classes (``labels``) or the predicted ones (``predictions``).
        limit: at most this many test images (``None``: all).
        pointing_tolerance: pointing-game radius in original pixels; ``None`` is :class:`PointingGame`'s
            default (TorchRay's 15 px for an image of 224 px and more, 15/224 of a smaller image's shorter
            side, chosen per image).
        difficult_list: the published per-image "difficult" list of the pointing game (a text file), instead
            of the coverage rule.
        insertion_step: pixels per insertion/deletion step (``None``: the image width).
        tie_order: the order of tied pixels in insertion/deletion (``rise``: RISE's reference order).
        saliency_mode: ``paper`` (the Explainer paper's setting: one merged mask per image, softmax
            probabilities) or ``pairs`` (one sample per image-class pair, sigmoid probabilities).
        prediction_threshold: probability above which a class counts as predicted.
        evaluator: the encoding check's evaluator (a frozen classifier trained on randomly masked images), or
            ``None``: then the ``encoding`` group is left out.
    """

    metrics: list[str] = field(default_factory=lambda: list(METRIC_GROUPS))
    targets: str = "labels"
    limit: int | None = None
    pointing_tolerance: float | None = None
    difficult_list: str | None = None
    insertion_step: int | None = None
    tie_order: str = "rise"
    saliency_mode: str = "paper"
    prediction_threshold: float = 0.5
    evaluator: nn.Module | None = None


@dataclass
class StepInputs:
    """What one batch gives the metrics.

    Args:
        images: ``[B, 3, H, W]`` the images.
        maps: ``[B, K, h, w]`` the method's maps of ``classes``.
        unit_maps: the maps in [0, 1] (:func:`unit_maps`).
        classes: ``[B, K]`` the explained classes (``-1``: padding).
        batch: the batch (ground truth).
        targets: ``[B, C]`` multi-hot explained classes.
        all_masks: ``[B, C, h, w]`` the maps of every class in [0, 1] (class specificity), or None.
        cells: ``[B, K]`` grid cells of ``classes`` (grid protocols), or None.
    """

    images: Tensor
    maps: Tensor
    unit_maps: Tensor
    classes: Tensor
    batch: Batch
    targets: Tensor
    all_masks: Tensor | None = None
    cells: Tensor | None = None


@dataclass(frozen=True)
class SuiteContext:
    """What building a metric may use: the classifier, the class count, the ground-truth source, settings."""

    classifier: nn.Module | None
    num_classes: int
    source: str | None
    settings: EvaluationSettings
    grid_size: int = 2

    @property
    def activation(self) -> str:
        """The classifier's: ``sigmoid`` (multi-label) or ``softmax`` (single-label); probabilities follow it."""
        return getattr(self.classifier, "activation", "sigmoid")


@dataclass(frozen=True)
class MetricSpec:
    """One metric group.

    Args:
        name: the group's name (rows ``<name>.<key>``).
        build: the metric from a :class:`SuiteContext`.
        arguments: the metric's ``update`` arguments from a :class:`StepInputs`.
        keys: the ``compute()`` keys that become rows (``invalid`` rows carry no standard error).
        higher_is_better: per key, whether higher is better (``None``: a count).
        needs: ``ground_truth`` (masks or boxes), ``boxes``, ``cells`` (grid protocols), ``evaluator`` (the
            encoding check) or ``None``.
        all_masks: the metric needs the maps of every class (one more method call per batch).
        stderr: ``batches`` (batch-means standard error) or ``samples`` (from the per-sample scores).
    """

    name: str
    build: Callable[[SuiteContext], Metric]
    arguments: Callable[[StepInputs], tuple[Any, ...]]
    keys: tuple[str, ...]
    higher_is_better: dict[str, bool | None]
    needs: str | None = None
    all_masks: bool = False
    stderr: str = "batches"

    def feed(self, metric: Metric, inputs: StepInputs) -> dict[str, Tensor]:
        """Accumulates one batch into ``metric`` and returns that batch's values (``Metric.forward``)."""
        return metric(*self.arguments(inputs))

    def available(self, source: str | None, has_boxes: bool, has_evaluator: bool = False) -> bool:
        """Whether a batch with this ground truth (and the settings' evaluator) can feed the metric."""
        if self.needs == "ground_truth":
            return source is not None
        if self.needs == "boxes":
            return has_boxes
        if self.needs == "evaluator":
            return has_evaluator
        return True


def _spec(
    name: str,
    build: Callable[[SuiteContext], Metric],
    arguments: Callable[[StepInputs], tuple[Any, ...]],
    better: dict[str, bool | None],
    **kwargs: Any,
) -> MetricSpec:
    return MetricSpec(name, build, arguments, tuple(better), better, **kwargs)


SPECS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        _spec(
            "pointing_game",
            lambda c: PointingGame(
                c.num_classes,
                source=c.source,
                tolerance=c.settings.pointing_tolerance,
                difficult_list=c.settings.difficult_list,
            ),
            lambda s: (s.maps, s.batch, s.classes),
            {"accuracy": True, "accuracy_difficult": True, "hit_rate": True, "invalid": None},
            needs="ground_truth",
        ),
        _spec(
            "energy_pointing_game",
            lambda c: EnergyPointingGame(c.num_classes, source=c.source),
            lambda s: (s.maps, s.batch, s.classes),
            {"energy": True, "invalid": None},
            needs="ground_truth",
        ),
        _spec(
            "segmentation",
            lambda c: SegmentationMetrics(source=c.source),
            lambda s: (s.unit_maps, s.batch, s.classes),
            {
                "mean_f1": True,
                "c_f1": True,
                "acc": True,
                "d_iou": True,
                "c_iou": True,
                "auc": True,
                "overlap": True,
                "background_coverage": False,
                "object_coverage": True,
                "invalid": None,
            },
            needs="ground_truth",
        ),
        _spec(
            "box_iou",
            lambda c: SegmentationMetrics(source="boxes"),
            lambda s: (s.unit_maps, s.batch, s.classes),
            {"c_iou": True, "d_iou": True, "invalid": None},
            needs="boxes",
        ),
        _spec(
            "saliency",
            lambda c: SaliencyMetric(
                c.classifier, mode=c.settings.saliency_mode, activation="softmax" if c.activation == "softmax" else None
            ),
            lambda s: (s.images, s.unit_maps, s.classes),
            {"saliency": False, "invalid": None},
        ),
        _spec(
            "insertion_deletion",
            lambda c: InsertionDeletion(
                c.classifier, step=c.settings.insertion_step, tie_order=c.settings.tie_order, activation=c.activation
            ),
            lambda s: (s.images, s.maps, s.classes),
            {"insertion": True, "deletion": False, "invalid": None},
        ),
        _spec(
            "class_specificity",
            lambda c: ClassSpecificity(c.classifier, activation=c.activation),
            lambda s: (s.images, s.all_masks, s.targets),
            {"unmasked": None, "own_mask": True, "other_present_mask": False, "absent_mask": False, "invalid": None},
            all_masks=True,
        ),
        _spec(
            "encoding",
            lambda c: EncodingCheck(c.classifier, c.settings.evaluator, activation=c.activation),
            lambda s: (s.images, s.unit_maps, s.classes),
            {"classifier_p": None, "evaluator_p": True, "gap": False, "invalid": None},
            needs="evaluator",
        ),
        _spec(
            "localisation",
            lambda c: LocalisationScore(c.grid_size),
            lambda s: (s.maps, s.cells),
            {"mean": True, "median": True, "q1": True, "q3": True, "invalid": None},
            needs="cells",
            stderr="samples",
        ),
    )
}
METRIC_GROUPS = tuple(name for name, spec in SPECS.items() if spec.needs != "cells")
"""The metric groups of natural images (``--metrics all``); ``localisation`` is the grid protocols' score."""


def parse_metrics(spec: str | Iterable[str], groups: tuple[str, ...] = METRIC_GROUPS) -> list[str]:
    """``"all"`` or a comma-separated list of metric groups, validated against ``groups``."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["all"]:
        return list(groups)
    unknown = [n for n in names if n not in groups]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or names}; valid metrics: all, {', '.join(groups)}")
    return names


def ground_truth_source(batch: Batch) -> str | None:
    """``masks`` when the batch has valid masks, else ``boxes`` when it has boxes, else ``None``."""
    if batch.masks is not None and batch.mask_valid is not None and bool(batch.mask_valid.any()):
        return "masks"
    return "boxes" if batch.boxes is not None else None


def build_suite(names: Iterable[str], context: SuiteContext, has_boxes: bool) -> dict[str, Metric]:
    """The metrics of ``names`` that the ground truth allows (the others are left out), by group name."""
    has_evaluator = context.settings.evaluator is not None
    return {
        name: SPECS[name].build(context)
        for name in names
        if SPECS[name].available(context.source, has_boxes, has_evaluator)
    }


def unit_maps(maps: Tensor, unit_range: bool) -> Tensor:
    """Maps in [0, 1]: clamped for methods whose maps are masks (``unit_range``), else "max" normalised
    (positive part over its maximum). A map with any non-finite value comes out as NaN everywhere, so that
    every metric counts it in ``invalid`` (and scores it as an empty map)."""
    maps = maps.float()
    broken = ~torch.isfinite(maps).flatten(2).all(-1)
    clean = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    out = clean.clamp(0, 1) if unit_range else normalize_maps(clean, "max")
    return out.masked_fill(broken[..., None, None], float("nan"))


def batch_values(values: dict[str, Tensor], keys: Iterable[str]) -> Tensor:
    """The scalar values of ``keys`` of one batch as a float64 vector (NaN where a key is missing)."""
    out = [float(values[k]) if k in values and values[k].numel() == 1 else float("nan") for k in keys]
    return torch.tensor(out, dtype=torch.float64)


__all__ = [
    "METRIC_GROUPS",
    "SPECS",
    "EvaluationSettings",
    "MetricSpec",
    "StepInputs",
    "SuiteContext",
    "batch_values",
    "build_suite",
    "ground_truth_source",
    "parse_metrics",
    "unit_maps",
]
