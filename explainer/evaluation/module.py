"""The evaluation LightningModule: one attribution method crossed with the metric suite, run by ``Trainer.test``.

Batches stream from a data module's test split, one at a time (nothing is collected up front), and each
test image is scored exactly once on any number of processes: :class:`ShardedBatches` forms the batches a
single process would form and deals batch ``i`` to rank ``i % world``, without the padding of
``DistributedSampler``. Every metric keeps sum states (torchmetrics synchronises them across ranks on
``compute``); the per-batch values behind the standard error come from ``Metric.forward`` and are kept as
sums of moments (:class:`BatchMoments`), so the rows of several processes equal those of one up to float
summation order.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from explainer.classifiers.frozen import FrozenClassifier
from explainer.data.batch import Batch, collate
from explainer.data.loader import SkipReportingLoader
from explainer.evaluation.states import BatchMoments, KeptMaps, ShardedBatches, Totals
from explainer.evaluation.suite import (
    SPECS,
    EvaluationSettings,
    StepInputs,
    SuiteContext,
    batch_values,
    build_suite,
    ground_truth_source,
    unit_maps,
)
from explainer.methods.base import AttributionMethod
from explainer.metrics.causal import insertion_deletion_curves
from explainer.metrics.localisation import localisation_scores
from explainer.ops import present_classes
from explainer.protocols import get_protocol, grid_targets

EXAMPLES = 6


class AttributionEvaluation(pl.LightningModule):
    """One attribution method on a data module's test split, scored by the metric suite.

    ``trainer.test(module)`` fills :attr:`rows` (``{method, metric, value, n, stderr, targets}``, the same on
    every rank), :attr:`examples` (the first batch's images, maps and classes, on rank 0), :attr:`curves`
    (the mean insertion / deletion curves of the example images, on rank 0) and, under a grid protocol,
    :attr:`distribution` (every per-map localisation score) and :attr:`kept` (the maps explaining the top-left
    cell and their scores, for AggAtt).

    Args:
        name: the rows' method name (e.g. ``gradient@final+smooth9``).
        method: the attribution method.
        classifier: the classifier the metrics query (the method's, or its protocol wrapper).
        datamodule: the data module whose test split is scored.
        settings: metrics, targets, limit and protocol choices.
        protocol: a grid protocol (``gridpg``, ``difull``, ``dipart``): the explained classes are the scored
            cells' and the metric is the localisation score; ``None`` for natural images.
        grid_size: ``n`` of the ``n x n`` grids.
    """

    def __init__(
        self,
        name: str,
        method: AttributionMethod,
        classifier: nn.Module | None,
        datamodule: Any,
        settings: EvaluationSettings,
        protocol: str | None = None,
        grid_size: int = 2,
    ) -> None:
        super().__init__()
        self.name = name
        self.method = method
        self.classifier = classifier
        self.source_module = datamodule
        self.settings = settings
        self.protocol = protocol
        self.grid_size = int(grid_size)
        self.metrics = nn.ModuleDict()
        self.moments = nn.ModuleDict()
        self.totals = Totals()
        self.kept_maps = KeptMaps()
        self.rows: list[dict[str, Any]] = []
        self.examples: dict[str, Tensor] = {}
        self.curves: dict[str, Tensor] = {}
        self.distribution: Tensor | None = None
        self.kept: dict[str, Tensor] = {}
        self.num_classes = int(datamodule.num_classes)

    # -- data ---------------------------------------------------------------------------------------------
    def _dataset(self) -> Any:
        self.source_module.setup("test")
        dataset = self.source_module._dataset("test")
        limit = self.settings.limit
        if limit is not None and limit < len(dataset):
            dataset = Subset(dataset, range(limit))
        if len(dataset) == 0:
            raise ValueError(f"the test split of {type(self.source_module).__name__} is empty")
        return dataset

    def test_dataloader(self) -> SkipReportingLoader:
        """The test split (up to ``settings.limit`` images) in this rank's share of the batches."""
        dataset = self._dataset()
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.global_rank if self._trainer is not None else 0
        dm = self.source_module
        workers = int(getattr(dm, "num_workers", 0))
        return SkipReportingLoader(
            dataset,
            batch_sampler=ShardedBatches(len(dataset), dm.batch_size, rank, world),
            num_workers=workers,
            pin_memory=bool(getattr(dm, "pin_memory", False)),
            persistent_workers=False,
            collate_fn=collate,
        )

    def _first_batch(self) -> Batch:
        """The first batch a single process would see (every rank decides the metrics from it alike)."""
        dataset = self._dataset()
        samples = [dataset[i] for i in range(min(len(dataset), self.source_module.batch_size))]
        batch = collate(samples)
        if batch is None:
            raise ValueError("the first test batch holds no readable image")
        return batch

    # -- metrics ------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if len(self.metrics):
            return
        if self.protocol is not None:
            names, source, has_boxes = ["localisation"], None, False
        else:
            first = self._first_batch()
            names, source, has_boxes = self.settings.metrics, ground_truth_source(first), first.boxes is not None
            if isinstance(self.classifier, FrozenClassifier):  # the outputs, the gradients, the freeze
                self.classifier.verify(first.image.to(next(self.classifier.parameters()).device), self.num_classes)
        context = SuiteContext(self.classifier, self.num_classes, source, self.settings, self.grid_size)
        for name, metric in build_suite(names, context, has_boxes).items():
            self.metrics[name] = metric
            self.moments[name] = BatchMoments(len(SPECS[name].keys))

    def _targets(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
        if self.protocol is not None:
            classes, cells = grid_targets(batch, self.protocol, self.grid_size)
            return batch.labels, classes, cells
        targets = batch.labels
        if self.settings.targets == "predictions":
            with torch.no_grad():
                logits = self.classifier(batch.image)
            if getattr(self.classifier, "activation", "sigmoid") == "softmax":  # single-label: its top class
                targets = torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).to(batch.image.dtype)
            else:
                targets = (torch.sigmoid(logits.float()) > self.settings.prediction_threshold).to(batch.image.dtype)
        return targets, present_classes(targets), None

    def _attribute(self, images: Tensor, classes: Tensor, batch: Batch) -> Tensor:
        extra: dict[str, Any] = {}
        if self.protocol is None:
            if batch.masks is not None:
                extra["masks"] = batch.masks
            if batch.boxes is not None:
                extra.update(boxes=batch.boxes, box_labels=batch.box_labels)
        return self.method(images, classes, **extra).detach()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        images = batch.image
        targets, classes, cells = self._targets(batch)
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)
        start = time.perf_counter()
        maps = self._attribute(images, classes, batch)
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)
        seconds = time.perf_counter() - start
        unit_range = bool(getattr(self.method, "unit_range", False))
        all_masks = None
        if any(SPECS[name].all_masks for name in self.metrics):
            every = torch.arange(self.num_classes, device=images.device).expand(len(images), -1)
            all_masks = unit_maps(self._attribute(images, every, batch), unit_range)
        inputs = StepInputs(images, maps, unit_maps(maps, unit_range), classes, batch, targets, all_masks, cells)
        for name, metric in self.metrics.items():
            spec = SPECS[name]
            values = spec.feed(metric, inputs)
            self.moments[name].update(batch_values(values, spec.keys))
        self.totals.update(seconds, len(images), int((classes >= 0).sum()))
        if cells is not None:
            self._keep_cell(maps, cells, batch_idx, len(images))
        if batch_idx == 0 and self.global_rank == 0:
            self._keep_examples(inputs)

    def _keep_cell(self, maps: Tensor, cells: Tensor, batch_idx: int, size: int, cell: int = 0) -> None:
        scores, _ = localisation_scores(maps, cells, self.grid_size)
        chosen = cells[cells >= 0] == cell
        if bool(chosen.any()):
            first = (batch_idx * self.trainer.world_size + self.global_rank) * self.source_module.batch_size
            rows = torch.arange(size, device=maps.device).unsqueeze(1).expand_as(cells)[cells >= 0][chosen]
            self.kept_maps.update(maps[cells >= 0][chosen], scores[chosen], rows + first)

    def _keep_examples(self, inputs: StepInputs) -> None:
        keep = min(EXAMPLES, len(inputs.images))
        self.examples = {
            "images": inputs.images[:keep].float().cpu(),
            "maps": inputs.unit_maps[:keep].cpu(),
            "classes": inputs.classes[:keep].cpu(),
        }
        valid = inputs.classes[:keep, :1] >= 0
        if self.protocol is None and self.classifier is not None and bool(valid.any()):
            curves = insertion_deletion_curves(
                self.classifier,
                inputs.images[:keep],
                inputs.unit_maps[:keep, :1],
                inputs.classes[:keep, :1],
                step=self.settings.insertion_step,
                tie_order=self.settings.tie_order,
            )
            self.curves = {
                mode: curves[mode][valid[:, 0], 0].float().mean(0).cpu() for mode in ("insertion", "deletion")
            }

    # -- rows ---------------------------------------------------------------------------------------------
    def on_test_epoch_end(self) -> None:
        targets = get_protocol(self.protocol).explained(self.grid_size) if self.protocol else self.settings.targets
        totals = {k: float(v) for k, v in self.totals.compute().items()}
        rows = []
        for name, metric in self.metrics.items():
            spec = SPECS[name]
            values = metric.compute()
            stderr = self.moments[name].compute()
            if spec.stderr == "samples":
                with metric.sync_context():
                    scores = metric.scores().double().cpu()
                self.distribution = scores.float()
                count = scores.numel()
                sample_stderr = float(scores.std() / math.sqrt(count)) if count > 1 else float("nan")
            for index, key in enumerate(spec.keys):
                if key not in values:
                    continue
                if key == "invalid":
                    error = None
                elif spec.stderr == "samples":
                    error = sample_stderr if key == "mean" else None
                else:
                    error = float(stderr[index])
                n = int(values["samples"]) if "samples" in values else int(totals["pairs"])
                metric_name = f"{self.protocol}.{key}" if self.protocol else f"{name}.{key}"
                if key == "accuracy_difficult":  # which "difficult" subset: the rule or a published list
                    metric_name += f"[{metric.difficult_source}]"
                rows.append(
                    {
                        "method": self.name,
                        "metric": metric_name,
                        "value": float(values[key]),
                        "n": n,
                        "stderr": error,
                        "targets": targets,
                    }
                )
        images = int(totals["images"])
        per_image = totals["seconds"] / max(images, 1)
        rows.append(
            {
                "method": self.name,
                "metric": "seconds_per_image",
                "value": per_image,
                "n": images,
                "stderr": None,
                "targets": targets,
            }
        )
        self.rows = rows
        if self.protocol is not None:
            self.kept = {k: v.cpu() for k, v in self.kept_maps.compute().items()}


__all__ = ["AttributionEvaluation"]
