"""Every method by every metric on a data module's test split: the engine of ``evaluate.py`` and the demo.

Rows are ``{method, metric, value, n, stderr, targets}``. ``targets`` says which classes were explained:
``labels`` (the ground-truth classes, as in the Explainer paper) or ``predictions`` (the classifier's).
``stderr`` is the batch-means standard error: the standard deviation of the per-batch values over the
square root of the number of batches (metrics keep sum states, so this needs no per-sample storage).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from explainer.data.batch import Batch
from explainer.methods.base import AttributionMethod, present_classes
from explainer.metrics import (
    ClassSpecificity,
    EnergyPointingGame,
    InsertionDeletion,
    PointingGame,
    SaliencyMetric,
    SegmentationMetrics,
    normalize_maps,
)

METRIC_GROUPS = ("pointing_game", "energy_pointing_game", "segmentation", "box_iou", "saliency",
                 "insertion_deletion", "class_specificity")
_KEPT_KEYS = {
    "pointing_game": ("accuracy", "accuracy_difficult", "hit_rate", "invalid"),
    "energy_pointing_game": ("energy", "invalid"),
    "segmentation": ("mean_f1", "c_f1", "acc", "d_iou", "c_iou", "auc", "overlap", "background_coverage",
                     "object_coverage", "invalid"),
    "box_iou": ("c_iou", "d_iou", "invalid"),
    "saliency": ("saliency", "invalid"),
    "insertion_deletion": ("insertion", "deletion", "invalid"),
    "class_specificity": ("unmasked", "own_mask", "other_present_mask", "absent_mask", "invalid"),
}


def parse_metrics(spec: str | Iterable[str]) -> list[str]:
    """``"all"`` or a comma-separated list of metric groups, validated."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["all"]:
        return list(METRIC_GROUPS)
    unknown = [n for n in names if n not in METRIC_GROUPS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or names}; valid metrics: all, {', '.join(METRIC_GROUPS)}")
    return names


@dataclass
class EvaluationSettings:
    """How methods are evaluated.

    Args:
        metrics: metric groups (see ``METRIC_GROUPS``).
        targets: explain the ground-truth classes (``labels``) or the predicted ones (``predictions``).
        limit: at most this many test images (``None``: all).
        pointing_tolerance: pointing-game radius in original pixels; ``None`` uses TorchRay's 15 px for images
            of 224 px and more, and 15/224 of the shorter side for smaller images (digit scenes: 4.3 px at 64 px).
        insertion_step: pixels per insertion/deletion step (``None``: the image width).
        prediction_threshold: probability above which a class counts as predicted.
    """

    metrics: list[str] = field(default_factory=lambda: list(METRIC_GROUPS))
    targets: str = "labels"
    limit: int | None = None
    pointing_tolerance: float | None = None
    insertion_step: int | None = None
    prediction_threshold: float = 0.5


def _ground_truth_source(batch: Batch) -> str | None:
    if batch.masks is not None and batch.mask_valid is not None and bool(batch.mask_valid.any()):
        return "masks"
    return "boxes" if batch.boxes is not None else None


def _make_metrics(settings: EvaluationSettings, classifier: nn.Module, num_classes: int, batch: Batch) -> dict[str, Metric]:
    source = _ground_truth_source(batch)
    shorter = int(batch.orig_size.min()) if batch.orig_size is not None else min(batch.image.shape[-2:])
    tolerance = dict(tolerance=settings.pointing_tolerance) if settings.pointing_tolerance is not None else (
        dict(tolerance=15.0) if shorter >= 224 else dict(tolerance_relative=15 / 224))
    local = dict(sync_on_compute=False)  # no implicit cross-process sync: see evaluate_method's ``combine``
    out: dict[str, Metric] = {}
    for name in settings.metrics:
        if name in ("pointing_game", "energy_pointing_game", "segmentation") and source is None:
            continue  # no ground truth in this data module
        if name == "box_iou" and batch.boxes is None:
            continue
        if name == "pointing_game":
            out[name] = PointingGame(num_classes, source=source, **tolerance, **local)
        elif name == "energy_pointing_game":
            out[name] = EnergyPointingGame(num_classes, source=source, **local)
        elif name == "segmentation":
            out[name] = SegmentationMetrics(source=source, **local)
        elif name == "box_iou":
            out[name] = SegmentationMetrics(source="boxes", **local)
        elif name == "saliency":
            out[name] = SaliencyMetric(classifier, **local)
        elif name == "insertion_deletion":
            out[name] = InsertionDeletion(classifier, step=settings.insertion_step, **local)
        elif name == "class_specificity":
            out[name] = ClassSpecificity(classifier, **local)
    return out


def _update(name: str, metric: Metric, images: Tensor, maps: Tensor, unit_maps: Tensor,
            classes: Tensor, batch: Batch, all_masks: Tensor | None, targets: Tensor) -> None:
    if name in ("pointing_game", "energy_pointing_game"):
        metric.update(maps, batch, classes)
    elif name in ("segmentation", "box_iou"):
        metric.update(unit_maps, batch, classes)
    elif name == "saliency":
        metric.update(images, unit_maps, classes)
    elif name == "insertion_deletion":
        metric.update(images, maps, classes)
    elif name == "class_specificity" and all_masks is not None:
        metric.update(images, all_masks, targets)


def _unit(maps: Tensor, method: AttributionMethod) -> Tensor:
    """Maps in [0, 1]: clamped for methods whose maps are masks (``unit_range``), else "max" normalised
    (positive part over its maximum)."""
    maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    return maps.clamp(0, 1) if getattr(method, "unit_range", False) else normalize_maps(maps, "max")


def evaluate_method(
    method_name: str,
    method: AttributionMethod,
    batches: list[Batch],
    classifier: nn.Module,
    num_classes: int,
    settings: EvaluationSettings,
    progress: Callable[[int], None] | None = None,
    combine: Callable[..., tuple] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """Evaluates one method on prepared batches.

    ``method_name`` names the rows (e.g. ``gradient@final+smooth9``); how maps are brought to [0, 1]
    follows the method's ``unit_range``. ``combine`` is the hook of evaluation split across processes (:mod:`explainer.distributed_eval`): it
    takes ``(totals, per_batch, seconds, images_seen, pairs)`` of this process's batches and returns them
    for the batches of every process. Metrics never sync on ``compute()`` by themselves.

    Returns:
        The rows, and example maps of the first batch (``images``, ``maps``, ``classes``) for pictures.
    """
    totals: dict[str, Metric] = {}
    per_batch: dict[str, list[dict[str, float]]] = {}
    examples: dict[str, Tensor] = {}
    seconds, images_seen, pairs = 0.0, 0, 0
    for index, batch in enumerate(batches):
        images = batch.image
        targets = batch.labels
        if settings.targets == "predictions":
            with torch.no_grad():
                targets = (torch.sigmoid(classifier(images)) > settings.prediction_threshold).to(images.dtype)
        classes = present_classes(targets)
        extra = {"masks": batch.masks} if batch.masks is not None else {}
        if batch.boxes is not None:
            extra.update(boxes=batch.boxes, box_labels=batch.box_labels)
        start = time.perf_counter()
        maps = method(images, classes, **extra).detach()
        seconds += time.perf_counter() - start
        all_masks = None
        if "class_specificity" in settings.metrics:
            every = torch.arange(num_classes, device=images.device).expand(len(images), -1)
            all_masks = _unit(method(images, every, **extra).detach(), method)
        unit_maps = _unit(maps, method)
        images_seen += len(images)
        pairs += int((classes >= 0).sum())
        if not totals:
            totals = {k: m.to(images.device) for k, m in
                      _make_metrics(settings, classifier, num_classes, batch).items()}
            per_batch = {k: [] for k in totals}
        for name, total in totals.items():
            single = _make_metrics(
                EvaluationSettings(**{**settings.__dict__, "metrics": [name]}), classifier, num_classes, batch
            )[name].to(images.device)
            _update(name, single, images, maps, unit_maps, classes, batch, all_masks, targets)
            per_batch[name].append({k: float(v) for k, v in single.compute().items() if v.numel() == 1})
            total.merge_state(single)
            total._update_count += single._update_count  # merge_state does not count the merged updates
        if index == 0:
            keep = min(6, len(images))
            examples = {"images": images[:keep].cpu(), "maps": unit_maps[:keep].cpu(), "classes": classes[:keep].cpu()}
        if progress is not None:
            progress(len(images))
    if combine is not None:
        totals, per_batch, seconds, images_seen, pairs = combine(totals, per_batch, seconds, images_seen,
                                                                 pairs)
    rows = []
    for name, total in totals.items():
        values = total.compute()
        for key in _KEPT_KEYS[name]:
            if key not in values:
                continue
            value = float(values[key])
            batch_values = [b[key] for b in per_batch[name] if key in b and math.isfinite(b[key])]
            stderr = (float(torch.tensor(batch_values).std()) / math.sqrt(len(batch_values))
                      if len(batch_values) > 1 else float("nan"))
            n = int(values["samples"]) if "samples" in values else pairs
            rows.append({"method": method_name, "metric": f"{name}.{key}", "value": value, "n": n,
                         "stderr": None if key == "invalid" else stderr, "targets": settings.targets})
    rows.append({"method": method_name, "metric": "seconds_per_image", "value": seconds / max(images_seen, 1),
                 "n": images_seen, "stderr": None, "targets": settings.targets})
    return rows, examples


def collect_batches(datamodule: Any, limit: int | None, device: torch.device) -> list[Batch]:
    """The test batches (up to ``limit`` images), on ``device``."""
    datamodule.setup("test")
    batches, seen = [], 0
    for batch in datamodule.test_dataloader():
        if batch is None:
            continue
        if limit is not None and seen + len(batch) > limit:
            keep = limit - seen
            batch = Batch(**{k: (v[:keep] if v is not None else None) for k, v in batch.__dict__.items()})
        batches.append(batch.to(device))
        seen += len(batch)
        if limit is not None and seen >= limit:
            break
    if not batches:
        raise ValueError("the test split is empty")
    return batches


def write_results(rows: list[dict[str, Any]], out: Path) -> None:
    """Writes ``results.json`` and ``results.md`` (methods as rows, metrics as columns)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "results.md").write_text(results_table(rows))


def results_table(rows: list[dict[str, Any]], metrics: list[str] | None = None) -> str:
    """A markdown table, methods as rows (``value ± stderr``)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics = metrics or [m for m in dict.fromkeys(r["metric"] for r in rows) if not m.endswith(".invalid")]
    cell = {(r["method"], r["metric"]): r for r in rows}
    lines = ["| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for method in methods:
        cells = []
        for metric in metrics:
            r = cell.get((method, metric))
            if r is None:
                cells.append("")
            elif r.get("stderr") is not None and math.isfinite(r["stderr"]):
                cells.append(f"{r['value']:.4f} ± {r['stderr']:.4f}")
            else:
                cells.append(f"{r['value']:.4g}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_example_grid(examples: dict[str, dict[str, Tensor]], datamodule: Any, path: Path,
                      class_names: list[str] | None = None) -> Path:
    """A PNG grid: one row per method, the maps of each example image's first explained class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from explainer.callbacks.images import denormalize, save_figure

    methods = list(examples)
    first = examples[methods[0]]
    rgb = denormalize(first["images"], datamodule).permute(0, 2, 3, 1).numpy()
    cols = len(rgb)
    fig, axes = plt.subplots(len(methods) + 1, cols, figsize=(1.5 * cols, 1.5 * (len(methods) + 1)), squeeze=False)
    for j in range(cols):
        axes[0, j].imshow(rgb[j])
        cls = int(first["classes"][j, 0])
        axes[0, j].set_title(f"class {class_names[cls] if class_names and cls >= 0 else cls}", fontsize=7)
    for i, name in enumerate(methods, start=1):
        for j in range(cols):
            axes[i, j].imshow(rgb[j])
            axes[i, j].imshow(examples[name]["maps"][j, 0].numpy(), cmap="jet", alpha=0.55, vmin=0, vmax=1)
        axes[i, 0].text(-0.1, 0.5, name, transform=axes[i, 0].transAxes, ha="right", va="center", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    return save_figure(fig, path)
