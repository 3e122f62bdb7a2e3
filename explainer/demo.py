"""``make demo``: the main job on the embedded digit scenes, end to end.

Stages (the training stages are LightningCLI runs of the quickstart configs, what a user would type):
  1. train the digit-scenes classifier (``configs/quickstart/classifier.yaml``), test it, and copy it to
     ``checkpoints/quickstart/classifier.ckpt``;
  2. train the Explainer for it (``configs/quickstart/explainer.yaml``), which exports the best checkpoint to
     ``checkpoints/quickstart/explainer/``;
  3. evaluate the Explainer and the baselines on a subset of the test split with ground-truth classes,
     writing ``results/quickstart/results.json`` (rows ``{method, metric, value, n, stderr, targets}``),
     ``results.md`` and example maps;
and a closing summary table. Run ``python -m explainer.demo --help`` for options.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from explainer.atomic import write_atomic
from explainer.callbacks import ExportExplainer
from explainer.cli import finish_loggers, make_cli, run_dir
from explainer.evaluation import EvaluationSettings, MethodRun, evaluate_plan
from explainer.methods import method_class

console = Console()
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "quickstart"


def _stage(title: str) -> float:
    console.rule(f"[bold]{title}")
    return time.perf_counter()


def train_classifier(out: Path, extra: list[str]) -> dict[str, Any]:
    """Fits and tests the quickstart classifier; copies its best checkpoint to ``out/classifier.ckpt``."""
    cli = make_cli(["fit", "--config", str(CONFIGS / "classifier.yaml"), *extra])
    best = cli.trainer.checkpoint_callback.best_model_path
    if not best:
        raise RuntimeError("the classifier run saved no checkpoint; see the log above")
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, weights_only=True)[0]
    out.mkdir(parents=True, exist_ok=True)
    target = out / "classifier.ckpt"
    shutil.copyfile(best, target)
    finish_loggers(cli.trainer)
    return {
        "checkpoint": str(target),
        "run": str(run_dir(cli.trainer)),
        "test/mAP": results["test/mAP"],
        "test/F1": results["test/F1"],
        # held by the caller: while it lives, later stages reuse its rendered scenes (digit scenes share them)
        "datamodule": cli.datamodule,
    }


def train_learned(
    out: Path, classifier: str, extra: list[str], config: str = "explainer.yaml", name: str = "explainer"
) -> dict[str, Any]:
    """Fits a learned explainer from a quickstart config; its ExportExplainer callback writes ``out/<name>``."""
    cli = make_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / config),
            "--model.init_args.classifier",
            classifier,
            # the last callback of the config is the ExportExplainer: export into --out
            "--trainer.callbacks.init_args.folder",
            str(out / name),
            *extra,
        ]
    )
    exported = [c.exported for c in cli.trainer.callbacks if isinstance(c, ExportExplainer) and c.exported]
    if not exported:
        raise RuntimeError(f"the {name} run exported nothing; see the log above")
    # the monitored val/loss of the exported (best) checkpoint: no second validation pass
    best = cli.trainer.checkpoint_callback.best_model_score
    finish_loggers(cli.trainer)
    return {
        "export": str(exported[0]),
        "run": str(run_dir(cli.trainer)),
        "val/loss": float(best) if best is not None else None,
        "datamodule": cli.datamodule,
        "classifier": cli.model.classifier,
    }


def train_explainer(out: Path, classifier: str, extra: list[str]) -> dict[str, Any]:
    """Fits the quickstart Explainer; its ExportExplainer callback writes ``out/explainer``."""
    return train_learned(out, classifier, extra)


# the references and baselines of the demos, every registered one, with settings reduced where the defaults are
# too slow for a 2-core CPU (FIDO's default schedule alone takes 22 s per image there); evaluate.py runs them
# with the defaults. `make demo` scores the references and the gradient family (seconds in all); the
# perturbation and optimisation baselines (minutes) are scored by `make demo-family`, on the same images.
REFERENCES: dict[str, dict[str, Any]] = {"centre": {}, "uniform": {}}
FAST_BASELINES: dict[str, dict[str, Any]] = {
    "oracle": {},
    "gradcam": {},
    "gradcam++": {},
    "gradient": {},
    "input_x_gradient": {},
    "integrated_gradients": {"steps": 16},
    "guided_backprop": {},
}
SLOW_BASELINES: dict[str, dict[str, Any]] = {
    "rise": {"num_masks": 1000},
    "bbmp": {"iterations": 100},
    "fido": {"iterations": 50, "samples": 2},
    "extremal": {"areas": [0.1], "iterations": 100},
}
DEMO_METHODS: dict[str, dict[str, Any]] = {**REFERENCES, **FAST_BASELINES, **SLOW_BASELINES}
BASELINE_SETS = {
    "none": {},
    "fast": FAST_BASELINES,
    "slow": SLOW_BASELINES,
    "all": {**FAST_BASELINES, **SLOW_BASELINES},
}
"""What ``--baselines`` of the demos adds to the learned explainers and the references."""
# methods that cost at most one forward pass of their own network are evaluated on every test image
FULL_COSTS = ("free", "one pass")


def evaluate_quickstart(
    explainer_dir: Path,
    datamodule: Any,
    classifier: Any,
    out: Path,
    limit: int,
    baselines: str = "fast",
    baseline_limit: int = 32,
    learned: dict[str, Path] | None = None,
    extra_runs: dict[str, tuple[str, dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Evaluates the Explainer (and the other ``learned`` explainers, method name -> export folder) and the
    references on ``limit`` test images and the baselines of ``baselines`` (a key of :data:`BASELINE_SETS`)
    on the first ``baseline_limit`` of them (without the class-specificity test, which needs every class's
    map); ``extra_runs`` adds labelled runs of a method with other options (label -> (method, options)).
    Writes results and pictures through the same engine as ``evaluate.py``."""
    import lightning.pytorch as pl

    step = datamodule.image_size * 4
    full = EvaluationSettings(limit=limit, insertion_step=step)
    light = EvaluationSettings(
        limit=baseline_limit, insertion_step=step, metrics=[m for m in full.metrics if m != "class_specificity"]
    )
    names = {"explainer": {"path": str(explainer_dir)}}
    names.update({name: {"path": str(folder)} for name, folder in (learned or {}).items()})
    names.update({**REFERENCES, **BASELINE_SETS[baselines]})
    plan = [
        MethodRun(name, name, options, full if method_class(name).cost in FULL_COSTS else light)
        for name, options in names.items()
    ]
    plan += [
        MethodRun(label, name, options, full if method_class(name).cost in FULL_COSTS else light)
        for label, (name, options) in (extra_runs or {}).items()
    ]
    trainer = pl.Trainer(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        inference_mode=False,
        use_distributed_sampler=False,
        default_root_dir=str(out),
    )
    settings = {
        "limit": limit,
        "baseline_limit": baseline_limit,
        "insertion_step": step,
        "targets": "labels",
        "tie_order": full.tie_order,
        "saliency_mode": full.saliency_mode,
    }
    return evaluate_plan(plan, trainer, classifier, datamodule, out, [], settings, console=console).rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the demo and prints a summary table.

    Args:
        argv: command-line arguments (see ``--help``).

    Returns:
        The summary (also written to ``<out>/summary.json``).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="checkpoints/quickstart", help="export folder")
    parser.add_argument("--results", default="results/quickstart", help="evaluation folder")
    parser.add_argument("--limit", type=int, default=200, help="test images evaluated")
    parser.add_argument(
        "--baselines",
        choices=list(BASELINE_SETS),
        default="fast",
        help="baselines scored beside the Explainer: the gradient family and the oracle (fast, the default), "
        "also RISE, BBMP, FIDO and extremal perturbations (all; minutes more, and in `make demo-family`), or none",
    )
    parser.add_argument("--no-baselines", dest="baselines", action="store_const", const="none", help="--baselines none")
    parser.add_argument("--fast", action="store_true", help="a tiny smoke run (1 epoch, few scenes)")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    out = Path(args.out)
    extra = []
    if args.fast:
        extra = [
            "--trainer.max_epochs",
            "1",
            "--data.init_args.train_scenes",
            "256",
            "--data.init_args.val_scenes",
            "64",
            "--data.init_args.test_scenes",
            "64",
        ]
        args.limit = min(args.limit, 32)

    summary: dict[str, Any] = {"stages": {}}
    start = _stage("1/4  classifier: train on digit scenes, then test")
    clf = train_classifier(out, extra)
    classifier_data = clf.pop("datamodule")  # noqa: F841 -- kept alive: the later stages reuse its scenes
    summary["classifier"] = clf
    summary["stages"]["classifier"] = time.perf_counter() - start

    start = _stage("2/4  Explainer: train against the frozen classifier, export the best checkpoint")
    exp = train_explainer(out, clf["checkpoint"], extra)
    summary["stages"]["explainer"] = time.perf_counter() - start

    start = _stage("3/4  evaluation on the test split (ground-truth classes)")
    rows = evaluate_quickstart(
        Path(exp["export"]),
        exp.pop("datamodule"),
        exp.pop("classifier"),
        Path(args.results),
        args.limit,
        baselines=args.baselines,
    )
    summary["explainer"] = exp
    summary["stages"]["evaluation"] = time.perf_counter() - start

    start = _stage("4/4  summary")
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))

    table = Table(title="quickstart summary")
    table.add_column("stage / metric")
    table.add_column("value", justify="right")
    table.add_row("classifier test mAP", f"{clf['test/mAP']:.4f}")
    table.add_row("classifier test F1", f"{clf['test/F1']:.4f}")
    value = {(r["method"], r["metric"]): r["value"] for r in rows}
    for metric, label in [
        ("pointing_game.accuracy", "pointing game"),
        ("box_iou.c_iou", "mask IoU vs boxes"),
        ("saliency.saliency", "saliency metric (lower better)"),
    ]:
        for method in ("explainer", "centre", "uniform"):
            if (method, metric) in value:
                table.add_row(f"{label}: {method}", f"{value[(method, metric)]:.4f}")
    if ("explainer", "class_specificity.own_mask") in value:
        own = value[("explainer", "class_specificity.own_mask")]
        for key in ("other_present_mask", "absent_mask"):
            other = value.get(("explainer", f"class_specificity.{key}"), float("nan"))
            table.add_row(f"class specificity: p_t with {key.replace('_', ' ')} / own", f"{other / own:.3f}")
    for stage, seconds in summary["stages"].items():
        table.add_row(f"time: {stage}", f"{seconds:.1f} s")
    console.print(table)
    console.print(f"classifier checkpoint: {clf['checkpoint']}  (run: {clf['run']})")
    console.print(f"Explainer export: {exp['export']}  (run with mask panels: {exp['run']}/images)")
    console.print(f"evaluation: {args.results}/results.json, results.md; example maps: {args.results}/examples.png")
    return summary


if __name__ == "__main__":
    main()
