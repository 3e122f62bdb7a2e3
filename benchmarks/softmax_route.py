"""The softmax route against the multi-label route: does an Explainer of a single-label classifier point at
the labelled digit as well as one of a multi-label classifier?

On digit scenes with exactly one digit each (single-label data), two classifiers are trained from the
quickstart classifier config with the same budget and seed: one multi-label (``activation: sigmoid``,
BCE, the paper's set-up) and one single-label (``activation: softmax``, cross-entropy). An Explainer is
then trained for each from the quickstart Explainer config with the same budget and seed: the first with
the paper's BCE objective, the second with the softmax objective (cross-entropy of the masked image on
the target class, the entropy term unchanged). Both are scored by the evaluation engine on the same test
scenes: pointing game, mask IoU against the digit boxes and the saliency metric.

Usage::

    python benchmarks/softmax_route.py                 # writes benchmarks/results/softmax_route.json
    python benchmarks/softmax_route.py --fast          # a smoke run (minutes become seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from rich.console import Console
from rich.table import Table

from explainer.atomic import write_atomic
from explainer.callbacks import ExportExplainer
from explainer.cli import make_cli
from explainer.evaluation import EvaluationSettings, MethodRun, evaluate_plan

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "quickstart"
RESULTS = Path(__file__).resolve().parent / "results"
METRICS = {
    "pointing_game.accuracy": "pointing game",
    "box_iou.c_iou": "mask IoU vs boxes",
    "saliency.saliency": "saliency (lower better)",
}
console = Console()


def single_digit_data(scenes: int, epochs: int, val: int, test: int) -> list[str]:
    """Overrides that make the quickstart data single-label: one digit per scene."""
    return [
        "--data.init_args.min_digits",
        "1",
        "--data.init_args.max_digits",
        "1",
        "--data.init_args.train_scenes",
        str(scenes),
        "--data.init_args.val_scenes",
        str(val),
        "--data.init_args.test_scenes",
        str(test),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.logger",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]


def run_route(activation: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Trains the classifier and its Explainer for one route; evaluates the Explainer."""
    start = time.perf_counter()
    clf = make_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "classifier.yaml"),
            "--model.init_args.activation",
            activation,
            "--trainer.default_root_dir",
            str(out / "classifier"),
            *single_digit_data(args.classifier_scenes, args.classifier_epochs, args.val, args.test),
        ]
    )
    best = clf.trainer.checkpoint_callback.best_model_path
    tested = clf.trainer.test(clf.model, datamodule=clf.datamodule, ckpt_path=best, weights_only=True, verbose=False)[0]
    classifier_seconds = time.perf_counter() - start

    start = time.perf_counter()
    exp = make_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "explainer.yaml"),
            "--model.init_args.classifier",
            best,
            "--trainer.callbacks.init_args.folder",
            str(out / "explainer"),
            "--trainer.default_root_dir",
            str(out / "explainer_run"),
            *single_digit_data(args.explainer_scenes, args.explainer_epochs, args.val, args.test),
        ]
    )
    exported = [c.exported for c in exp.trainer.callbacks if isinstance(c, ExportExplainer) and c.exported]
    explainer_seconds = time.perf_counter() - start

    settings = EvaluationSettings(metrics=["pointing_game", "box_iou", "saliency"], limit=args.test)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        inference_mode=False,
        use_distributed_sampler=False,
        default_root_dir=str(out),
    )
    plan = [MethodRun("explainer", "explainer", {"path": str(exported[0])}, settings)]
    rows = evaluate_plan(
        plan,
        trainer,
        exp.model.classifier,
        exp.datamodule,
        out / "evaluation",
        [],
        {"limit": args.test},
        console=console,
    ).rows
    scores = {r["metric"]: (r["value"], r.get("stderr"), r["n"]) for r in rows if r["metric"] in METRICS}
    return {
        "activation": activation,
        "objective": "BCE (paper)" if activation == "sigmoid" else "cross-entropy on the target class",
        "classifier_test_mAP": tested["test/mAP"],
        "scores": scores,
        "seconds": {"classifier": classifier_seconds, "explainer": explainer_seconds},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier-scenes", type=int, default=6000)
    parser.add_argument("--classifier-epochs", type=int, default=3)
    parser.add_argument("--explainer-scenes", type=int, default=4000)
    parser.add_argument("--explainer-epochs", type=int, default=4)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--test", type=int, default=500, help="test scenes scored")
    parser.add_argument("--work", default="runs/softmax_route", help="folder for the runs and exports")
    parser.add_argument("--out", default=str(RESULTS / "softmax_route.json"))
    parser.add_argument("--fast", action="store_true", help="a smoke run")
    args = parser.parse_args(argv)
    if args.fast:
        args.classifier_scenes = args.explainer_scenes = 64
        args.classifier_epochs = args.explainer_epochs = 1
        args.val = args.test = 16
    os.environ.setdefault("WANDB_MODE", "offline")
    routes = [run_route(a, Path(args.work) / a, args) for a in ("sigmoid", "softmax")]

    table = Table(title="Explainer of a multi-label vs a single-label classifier, single-digit scenes")
    table.add_column("route")
    table.add_column("classifier mAP", justify="right")
    for label in METRICS.values():
        table.add_column(label, justify="right")
    for route in routes:
        cells = []
        for metric in METRICS:
            value, stderr, _ = route["scores"][metric]
            cells.append(f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else ""))
        table.add_row(f"{route['activation']} ({route['objective']})", f"{route['classifier_test_mAP']:.3f}", *cells)
    console.print(table)
    gap = routes[1]["scores"]["pointing_game.accuracy"][0] - routes[0]["scores"]["pointing_game.accuracy"][0]
    console.print(f"pointing game, softmax - sigmoid: {gap:+.3f}")
    result = {
        "routes": routes,
        "pointing_game_gap": gap,
        "settings": vars(args),
        "machine": {"platform": platform.platform(), "threads": __import__("torch").get_num_threads()},
    }
    write_atomic(Path(args.out), json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
