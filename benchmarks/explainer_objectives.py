"""Ablation of the Explainer's objectives: the paper's loss and each per-class term (docs/objectives.md).

Every variant is trained from the quickstart Explainer config against the same classifier, with the same
budget and seed, and differs only in ``extra_losses``. Each export is then scored with ``evaluate.py`` on
the same test scenes: pointing game, mask IoU and mean F1 (stroke masks), IoU against boxes, the saliency
metric, insertion / deletion, class specificity, the encoding check (with an evaluator, trained here
unless ``--evaluator`` names one) and the GridPG localisation score on grids of single-digit scenes.

Usage::

    python benchmarks/explainer_objectives.py --classifier checkpoints/quickstart/classifier.ckpt
    python benchmarks/explainer_objectives.py --fast    # a smoke run on an untrained classifier (seconds)

writes ``benchmarks/results/explainer_objectives.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from explainer.atomic import write_atomic
from explainer.callbacks import ExportExplainer
from explainer.cli import make_cli
from explainer.evaluation.cli import main as evaluate

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "paper": {},
    "+class_preservation": {"class_preservation": 1.0},
    "+class_deletion": {"class_deletion": 1.0},
    "+mask_binarisation": {"mask_binarisation": 0.1},
    "+all three": {"class_preservation": 1.0, "class_deletion": 1.0, "mask_binarisation": 0.1},
}
COLUMNS = {
    "pointing_game.accuracy": "pointing",
    "segmentation.c_iou": "IoU masks",
    "segmentation.mean_f1": "mean F1",
    "saliency.saliency": "saliency ↓",
    "insertion_deletion.insertion": "insertion",
    "insertion_deletion.deletion": "deletion ↓",
    "class_specificity.own_mask": "own p_t",
    "class_specificity.other_present_mask": "other present p_t",
    "class_specificity.absent_mask": "absent p_t",
    "encoding.gap": "encoding gap",
    "gridpg.mean": "GridPG",
}
console = Console()


def budget(scenes: int, epochs: int, args: argparse.Namespace) -> list[str]:
    """Overrides shared by every training run: data sizes, epochs, no logger."""
    return [
        "--data.init_args.train_scenes",
        str(scenes),
        "--data.init_args.val_scenes",
        str(args.val),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.logger",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--seed_everything",
        str(args.seed),
    ]


def train_evaluator(args: argparse.Namespace, work: Path) -> str:
    """Trains the encoding check's evaluator from ``configs/quickstart/evaluator.yaml``; returns its checkpoint."""
    cli = make_cli(
        [
            "fit",
            "--config",
            str(REPO / "configs/quickstart/evaluator.yaml"),
            "--trainer.default_root_dir",
            str(work / "evaluator"),
            *budget(args.evaluator_scenes, args.evaluator_epochs, args),
        ]
    )
    return cli.trainer.checkpoint_callback.best_model_path


def train_variant(name: str, extra: dict[str, float], classifier: str, args: argparse.Namespace, work: Path) -> str:
    """Trains one Explainer variant; returns its export folder."""
    folder = work / name.strip("+").replace(" ", "_")
    cli = make_cli(
        [
            "fit",
            "--config",
            str(REPO / "configs/quickstart/explainer.yaml"),
            "--model.init_args.classifier",
            classifier,
            "--model.init_args.extra_losses",
            json.dumps(extra),
            "--trainer.callbacks.init_args.folder",
            str(folder / "explainer"),
            "--trainer.default_root_dir",
            str(folder / "run"),
            *budget(args.explainer_scenes, args.explainer_epochs, args),
        ]
    )
    exported = [c.exported for c in cli.trainer.callbacks if isinstance(c, ExportExplainer) and c.exported]
    return str(exported[0])


def score(export: str, classifier: str, evaluator: str | None, args: argparse.Namespace, out: Path) -> dict:
    """The variant's rows on natural scenes and under GridPG: metric -> (value, stderr, n)."""
    common = [
        "--classifier",
        classifier,
        "--methods",
        f"explainer={export}",
        "--trainer.enable_progress_bar",
        "false",
        "--overwrite",
    ]
    metrics = "pointing_game,segmentation,saliency,insertion_deletion,class_specificity"
    natural = [
        "--data", str(REPO / "configs/data/digits.yaml"), "--data-arg", f"test_scenes={args.test}",
        "--limit", str(args.test), "--metrics", metrics + (",encoding" if evaluator else ""),
        "--out", str(out / "natural"), *common,
    ]  # fmt: skip
    if evaluator:
        natural += ["--evaluator", evaluator]
    rows = evaluate(natural)
    if args.grids:
        grid = [
            "--data", str(REPO / "configs/data/digits_single.yaml"), "--data-arg", f"test_scenes={args.grid_scenes}",
            "--protocol", "gridpg", "--limit", str(args.grids), "--out", str(out / "gridpg"), *common,
        ]  # fmt: skip
        rows += evaluate(grid)
    return {r["metric"]: (r["value"], r["stderr"], r["n"]) for r in rows if r["metric"] in COLUMNS}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", default="checkpoints/quickstart/classifier.ckpt")
    parser.add_argument("--evaluator", default=None, help="an evaluator checkpoint (default: train one)")
    parser.add_argument("--no-evaluator", action="store_true", help="leave the encoding check out")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--explainer-scenes", type=int, default=4000)
    parser.add_argument("--explainer-epochs", type=int, default=5)
    parser.add_argument("--evaluator-scenes", type=int, default=15000)
    parser.add_argument("--evaluator-epochs", type=int, default=4)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=200, help="test scenes scored")
    parser.add_argument("--grids", type=int, default=64, help="GridPG grids scored (0: none)")
    parser.add_argument("--grid-scenes", type=int, default=500, help="single-digit scenes the grids are built from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/explainer_objectives", help="folder for the runs and exports")
    parser.add_argument("--out", default=str(RESULTS / "explainer_objectives.json"))
    parser.add_argument("--fast", action="store_true", help="a smoke run")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    work = Path(args.work)
    if args.fast:
        args.explainer_scenes = args.evaluator_scenes = 32
        args.explainer_epochs = args.evaluator_epochs = 1
        args.val, args.test, args.grids = 16, 8, 0
    start = time.perf_counter()
    evaluator = None if args.no_evaluator else args.evaluator or train_evaluator(args, work)
    seconds = {"evaluator": time.perf_counter() - start}
    results = {}
    for name in args.variants:
        start = time.perf_counter()
        export = train_variant(name, VARIANTS[name], args.classifier, args, work)
        seconds[name] = time.perf_counter() - start
        results[name] = {
            "extra_losses": VARIANTS[name],
            "scores": score(export, args.classifier, evaluator, args, work / "scores" / name.strip("+")),
        }
    table = Table(title=f"Explainer objectives, {args.explainer_scenes} scenes x {args.explainer_epochs} epochs, "
                  f"seed {args.seed}")  # fmt: skip
    table.add_column("variant")
    shown = [m for m in COLUMNS if any(m in r["scores"] for r in results.values())]
    for metric in shown:
        table.add_column(COLUMNS[metric], justify="right")
    for name, result in results.items():
        cells = []
        for metric in shown:
            value, stderr, _ = result["scores"].get(metric, (float("nan"), None, 0))
            cells.append(f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else ""))
        table.add_row(name, *cells)
    console.print(table)
    result = {
        "variants": results,
        "seconds": seconds,
        "settings": vars(args),
        "evaluator": evaluator,
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
    }
    write_atomic(Path(args.out), json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
