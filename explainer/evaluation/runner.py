"""The one loop over methods: each :class:`MethodRun` is an :class:`AttributionEvaluation` run by ``Trainer.test``.

Used by ``evaluate.py`` (natural images and the grid protocols) and by the demo. After every method, rank 0
writes ``results.json`` atomically, so a run killed in the middle of a method keeps every finished method's
rows for ``--resume``. At the end it writes the figures and hands the rows and example maps to the
trainer's loggers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console
from torch import Tensor, nn

from explainer.evaluation.figures import (
    aggatt_of,
    save_aggatt_figures,
    save_curves,
    save_example_grid,
    save_score_boxplot,
)
from explainer.evaluation.module import AttributionEvaluation
from explainer.evaluation.plan import MethodRun
from explainer.evaluation.results import write_atomic, write_results
from explainer.methods import build_method
from explainer.methods.infill import Infill


@dataclass
class Outcome:
    """What an evaluation produced (figures' inputs are filled on rank 0 only)."""

    rows: list[dict[str, Any]]
    examples: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    curves: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    distributions: dict[str, Tensor] = field(default_factory=dict)
    aggatt: dict[str, Tensor] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


def check_infill_data(method: nn.Module, datamodule: Any) -> None:
    """Refuses, before any image is scored, a method whose in-filler (FIDO / BBMP's ``infill``) cannot fill this
    data: a learned in-filler trained at another image size or normalisation (see ``Infill.check_data``)."""
    infill = getattr(method, "infill", None)
    if isinstance(infill, Infill):
        infill.check_data(
            getattr(datamodule, "image_size", None), getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        )


def evaluate_plan(
    plan: list[MethodRun],
    trainer: pl.Trainer,
    classifier: nn.Module,
    datamodule: Any,
    out: Path,
    rows: list[dict[str, Any]],
    settings: dict[str, Any] | None = None,
    protocol: str | None = None,
    grid_size: int = 2,
    seed: int = 0,
    console: Console | None = None,
) -> Outcome:
    """Evaluates every run of ``plan`` whose row name is not in ``rows`` yet; writes results and figures.

    Args:
        plan: the method runs, in order.
        trainer: the trainer (its strategy, devices, precision and loggers are used as they are).
        classifier: the classifier the methods explain and the metrics query.
        datamodule: the data module whose test split is scored.
        out: the output folder.
        rows: rows kept from an earlier run (``--resume``); their methods are not evaluated again.
        settings: the settings recorded in ``settings.json``.
        protocol: a grid protocol, or ``None``.
        grid_size: ``n`` of the grids.
        seed: the methods' seed (set before each method is built).
        console: where notes go (rank 0 only).

    Returns:
        The :class:`Outcome`, with every row.
    """
    zero = trainer.is_global_zero
    console = console or Console(quiet=not zero)
    outcome = Outcome(rows=list(rows))
    if protocol is not None:
        outcome.distributions, outcome.aggatt = _saved_distributions(out, {r["method"] for r in rows})
    done = {r["method"] for r in rows}
    for run in plan:
        for note in run.notes:
            console.print(f"[yellow]{note}")
        if run.row in done:
            console.print(f"{run.row}: reusing the rows in {out / 'results.json'}")
            continue
        console.print(f"[bold]{run.row}[/bold]")
        torch.manual_seed(seed)
        method = build_method(run.method, classifier, **run.options)
        check_infill_data(method, datamodule)
        module = AttributionEvaluation(run.row, method, classifier, datamodule, run.settings, protocol, grid_size)
        trainer.test(module, verbose=False)
        outcome.rows += module.rows
        if module.examples:
            outcome.examples[run.row] = module.examples
        if module.curves:
            outcome.curves[run.row] = module.curves
        if protocol is not None and module.distribution is not None:
            outcome.distributions[run.row] = module.distribution
            outcome.aggatt[run.row] = aggatt_of(
                module.kept, tuple(module.examples["images"].shape[-2:]) if module.examples else (1, 1)
            )
        if zero:
            write_results(outcome.rows, out, settings)
            if protocol is not None:
                _save_distributions(out, outcome)
    if zero:
        write_results(outcome.rows, out, settings)
        outcome.figures = _figures(outcome, plan, datamodule, out, protocol, grid_size)
        log_outcome(trainer, outcome)
        console.print((out / "results.md").read_text())
    return outcome


def _figures(
    outcome: Outcome, plan: list[MethodRun], datamodule: Any, out: Path, protocol: str | None, grid_size: int
) -> list[Path]:
    paths = []
    if outcome.examples:
        paths.append(
            save_example_grid(
                outcome.examples, datamodule, out / "examples.png", getattr(datamodule, "class_names", None)
            )
        )
    if outcome.curves:
        paths.append(save_curves(outcome.curves, out / "curves.png"))
    if protocol is not None and outcome.distributions:
        order = {run.row: i for i, run in enumerate(plan)}
        names = sorted(outcome.distributions, key=lambda name: order.get(name, len(order)))
        outcome.distributions = {name: outcome.distributions[name] for name in names}
        outcome.aggatt = {name: outcome.aggatt[name] for name in names if name in outcome.aggatt}
        paths.append(save_score_boxplot(outcome.distributions, out / "scores.png", protocol, grid_size))
        paths += save_aggatt_figures(outcome.aggatt, out, grid_size, protocol)
        _save_distributions(out, outcome)
    return paths


def _save_distributions(out: Path, outcome: Outcome) -> None:
    """``distributions.pt``: per-map scores and AggAtt bins of every method (tensors only), atomically."""
    temporary = out / ".distributions.pt.tmp"
    torch.save({"scores": outcome.distributions, "aggatt": outcome.aggatt}, temporary)
    temporary.replace(out / "distributions.pt")


def _saved_distributions(out: Path, methods: set[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    path = out / "distributions.pt"
    if not methods or not path.exists():
        return {}, {}
    saved = torch.load(path, weights_only=True)
    return (
        {k: v for k, v in saved["scores"].items() if k in methods},
        {k: v for k, v in saved["aggatt"].items() if k in methods},
    )


def log_outcome(trainer: pl.Trainer, outcome: Outcome) -> None:
    """Hands the rows to every logger (a table under wandb, metrics ``eval/<method>/<metric>`` otherwise) and
    the figures to wandb as images."""
    columns = ["method", "metric", "value", "n", "stderr", "targets"]
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(
                key="evaluation/results", columns=columns, data=[[r[c] for c in columns] for r in outcome.rows]
            )
            for path in outcome.figures:
                logger.log_image(key=f"evaluation/{path.stem}", images=[str(path)])
        else:
            logger.log_metrics({f"eval/{r['method']}/{r['metric']}": r["value"] for r in outcome.rows})
        logger.save()


__all__ = ["Outcome", "evaluate_plan", "log_outcome", "write_atomic"]
