"""Ablation of the Explainer's objectives: the paper's loss, each per-class term and the mask outputs without
a floor (hard concrete, clipped sigmoid; docs/objectives.md).

Every variant is trained from the quickstart Explainer config against the same classifier, with the same
budget and seed, and differs only in ``extra_losses`` and the mask output. Each export is then scored with
``evaluate.py`` on the same test scenes: pointing game, mask IoU and mean F1 (stroke masks), IoU against
boxes, the saliency metric, insertion / deletion, class specificity and the encoding check (with an
evaluator, trained here unless ``--evaluator`` names one) and, on grids of single-digit scenes, GridPG
localisation. For the protocols in ``--finetune`` (DiFull by default, whose per-cell classes need their own
heads), the export is fine-tuned on the grids with ``configs/quickstart/explainer_<protocol>.yaml`` (the same
variant options) and scored by that protocol's localisation.

Usage::

    python benchmarks/explainer_objectives.py --classifier checkpoints/quickstart/classifier.ckpt
    python benchmarks/explainer_objectives.py --variants "+class_deletion" --seeds 1 2   # more seeds, merged
    python benchmarks/explainer_objectives.py --fast    # a smoke run on an untrained classifier

writes ``benchmarks/results/explainer_objectives.json`` (variant -> seed -> scores; a later run merges into
it) and prints the table, mean over the seeds run.
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
import yaml
from rich.console import Console
from rich.table import Table

from explainer.atomic import write_atomic
from explainer.callbacks import ExportExplainer
from explainer.cli import make_cli
from explainer.evaluation.cli import main as evaluate

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CLASS_TERMS = {"class_preservation": 1.0, "class_deletion": 1.0}
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {},
    "+class_preservation": {"extra_losses": {"class_preservation": 1.0}},
    "+class_deletion": {"extra_losses": {"class_deletion": 1.0}},
    "+mask_binarisation": {"extra_losses": {"mask_binarisation": 0.1}},
    "+hard_concrete": {"output": "hard_concrete"},
    "+clipped": {"output": "clipped"},
    "+class_deletion +hard_concrete": {"extra_losses": {"class_deletion": 1.0}, "output": "hard_concrete"},
    "+class_deletion +clipped": {"extra_losses": {"class_deletion": 1.0}, "output": "clipped"},
    "+both class terms +clipped": {"extra_losses": CLASS_TERMS, "output": "clipped"},
    # FIDO's generative in-fill inside the Explainer's objective (configs/quickstart/infiller.yaml exports it)
    "+class_deletion +clipped +learned fill": {
        "extra_losses": {"class_deletion": 1.0},
        "output": "clipped",
        "fill": "learned=checkpoints/quickstart/infiller",
    },
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
    "gridpg_finetuned.mean": "GridPG (fine-tuned)",
    "difull.mean": "DiFull",
}
GRID_CONFIGS = {
    "gridpg": "configs/quickstart/explainer_gridpg.yaml",
    "difull": "configs/quickstart/explainer_difull.yaml",
}
console = Console(width=240)


def budget(scenes: int, epochs: int, seed: int, args: argparse.Namespace) -> list[str]:
    """Overrides shared by every training run: data sizes, epochs, seed, no logger."""
    return [
        "--data.init_args.train_scenes", str(scenes), "--data.init_args.val_scenes", str(args.val),
        "--trainer.max_epochs", str(epochs), "--trainer.logger", "false", "--trainer.enable_model_summary", "false",
        "--trainer.enable_progress_bar", "false", "--seed_everything", str(seed),
    ]  # fmt: skip


def train_evaluator(args: argparse.Namespace, work: Path) -> str:
    """Trains the encoding check's evaluator from ``configs/quickstart/evaluator.yaml``; returns its checkpoint."""
    cli = make_cli(
        [
            "fit", "--config", str(REPO / "configs/quickstart/evaluator.yaml"),
            "--trainer.default_root_dir", str(work / "evaluator"),
            *budget(args.evaluator_scenes, args.evaluator_epochs, 0, args),
        ]
    )  # fmt: skip
    return cli.trainer.checkpoint_callback.best_model_path


def variant_overrides(config: str, variant: dict[str, Any]) -> list[str]:
    """The config's model options with the variant's: its ``extra_losses``, mask ``output`` (the sigmoid when
    it names none) and ``fill`` (the mean colour when it names none) replace the config's; the config's other
    ``mask_net_kwargs`` stay."""
    model = yaml.safe_load((REPO / config).read_text())["model"]["init_args"]
    kwargs = {**model.get("mask_net_kwargs", {}), "output": variant.get("output", "sigmoid")}
    return [
        "--model.init_args.extra_losses", json.dumps(variant.get("extra_losses", {})),
        "--model.init_args.mask_net_kwargs", json.dumps(kwargs),
        "--model.init_args.fill", variant.get("fill", "mean"),
    ]  # fmt: skip


def train(config: str, variant: dict[str, Any], folder: Path, extra: list[str]) -> str:
    """Trains one Explainer from ``config`` with the variant's options; returns its export folder."""
    cli = make_cli(
        [
            "fit", "--config", str(REPO / config), *variant_overrides(config, variant),
            "--trainer.callbacks.init_args.folder", str(folder / "explainer"),
            "--trainer.default_root_dir", str(folder / "run"), *extra,
        ]
    )  # fmt: skip
    exported = [c.exported for c in cli.trainer.callbacks if isinstance(c, ExportExplainer) and c.exported]
    return str(exported[0])


def evaluate_rows(argv: list[str]) -> dict[str, tuple]:
    return {r["metric"]: (r["value"], r["stderr"], r["n"]) for r in evaluate(argv) if r["metric"] in COLUMNS}


def run_variant(variant: dict[str, Any], seed: int, evaluator: str | None, args: argparse.Namespace, folder: Path):
    """Trains and scores one variant at one seed: natural scenes, then GridPG and DiFull fine-tunes."""
    common = ["--classifier", args.classifier, "--trainer.enable_progress_bar", "false", "--overwrite"]
    seconds = {}
    start = time.perf_counter()
    natural = train(
        "configs/quickstart/explainer.yaml",
        variant,
        folder / "natural",
        [
            "--model.init_args.classifier",
            args.classifier,
            # the schedule this table was measured with (the quickstart now trains 2 epochs, one-cycle)
            "--model.init_args.lr",
            "0.001",
            "--model.init_args.scheduler",
            "none",
            *budget(args.explainer_scenes, args.explainer_epochs, seed, args),
        ],
    )
    seconds["natural"] = time.perf_counter() - start
    metrics = "pointing_game,segmentation,saliency,insertion_deletion,class_specificity"
    scores = evaluate_rows(
        [
            "--data", str(REPO / "configs/data/digits.yaml"), "--data-arg", f"test_scenes={args.test}",
            "--limit", str(args.test), "--metrics", metrics + (",encoding" if evaluator else ""),
            "--out", str(folder / "scores" / "natural"), "--methods", f"explainer={natural}", *common,
            *(["--evaluator", evaluator] if evaluator else []),
        ]
    )  # fmt: skip
    if not args.grids:  # no grid scores, and so no grid fine-tunes
        return {"scores": scores, "seconds": seconds}
    scores |= score_grids("gridpg", natural, args, folder / "scores" / "gridpg", common)
    for protocol in args.finetune:
        start = time.perf_counter()
        grid = train(
            GRID_CONFIGS[protocol],
            variant,
            folder / protocol,
            [
                "--model.init_args.classifier", args.classifier, "--model.init_args.init_from", natural,
                "--data.init_args.classifier", args.classifier, "--data.init_args.train_grids", str(args.train_grids),
                "--data.init_args.val_grids", str(args.val_grids), "--trainer.max_epochs", str(args.grid_epochs),
                "--trainer.logger", "false", "--trainer.enable_model_summary", "false",
                "--trainer.enable_progress_bar", "false", "--seed_everything", str(seed),
                *(["--data.init_args.source.init_args.train_scenes", str(args.grid_scenes)] if args.fast else []),
            ],
        )  # fmt: skip
        seconds[protocol] = time.perf_counter() - start
        rows = score_grids(protocol, grid, args, folder / "scores" / f"{protocol}_finetuned", common)
        scores |= {k.replace("gridpg.", "gridpg_finetuned."): v for k, v in rows.items()}
    return {"scores": scores, "seconds": seconds}


def score_grids(protocol: str, export: str, args: argparse.Namespace, out: Path, common: list[str]) -> dict:
    """The protocol's localisation rows for an export, on ``--grids`` grids of single-digit test scenes."""
    return evaluate_rows(
        [
            "--data", str(REPO / "configs/data/digits_single.yaml"), "--data-arg", f"test_scenes={args.grid_scenes}",
            "--protocol", protocol, "--limit", str(args.grids), "--out", str(out), "--methods", f"explainer={export}",
            *common,
        ]
    )  # fmt: skip


def summarise(runs: dict[str, dict]) -> dict[str, tuple[float, float | None, int]]:
    """Per metric over the seeds: (mean, stderr, seeds) when several seeds ran, else the one run's
    (value, batch-means stderr, 1)."""
    out = {}
    metrics = {m for run in runs.values() for m in run["scores"]}
    for metric in metrics:
        values = [run["scores"][metric] for run in runs.values() if metric in run["scores"]]
        if len(values) == 1:
            out[metric] = (values[0][0], values[0][1], 1)
        else:
            v = torch.tensor([x[0] for x in values], dtype=torch.float64)
            out[metric] = (float(v.mean()), float(v.std() / len(v) ** 0.5), len(v))
    return out


def print_table(results: dict[str, dict], title: str) -> None:
    table = Table(title=title)
    table.add_column("variant")
    table.add_column("seeds", justify="right")
    summaries = {name: summarise(r["seeds"]) for name, r in results.items()}
    shown = [m for m in COLUMNS if any(m in s for s in summaries.values())]
    for metric in shown:
        table.add_column(COLUMNS[metric], justify="right")
    for name, summary in summaries.items():
        cells = []
        for metric in shown:
            value, stderr, _ = summary.get(metric, (float("nan"), None, 0))
            shown_error = stderr is not None and stderr == stderr  # no error bar for a nan (one batch)
            cells.append(f"{value:.3f}" + (f" ± {stderr:.3f}" if shown_error else ""))
        table.add_row(name, str(len(results[name]["seeds"])), *cells)
    console.print(table)


def markdown(results: dict[str, dict]) -> str:
    """The table for the docs: mean (± standard error over seeds, or the batch-means one for one seed) per
    metric, and the class-specificity ratios (another present / an absent class's mask, over the own mask's
    p_t, from the means)."""
    summaries = {name: summarise(r["seeds"]) for name, r in results.items()}
    shown = [m for m in COLUMNS if any(m in s for s in summaries.values())]
    header = ["variant", "seeds", *(COLUMNS[m] for m in shown), "other / own ↓", "absent / own ↓"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for name, summary in summaries.items():
        cells = [name, str(len(results[name]["seeds"]))]
        for metric in shown:
            if metric not in summary:
                cells.append("-")  # not run for this variant
                continue
            value, stderr, _ = summary[metric]
            cells.append(f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None and stderr == stderr else ""))
        own = summary.get("class_specificity.own_mask", (float("nan"),))[0]
        for key in ("class_specificity.other_present_mask", "class_specificity.absent_mask"):
            cells.append(f"{summary.get(key, (float('nan'),))[0] / own:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", default="checkpoints/quickstart/classifier.ckpt")
    parser.add_argument("--evaluator", default=None, help="an evaluator checkpoint (default: train one)")
    parser.add_argument("--no-evaluator", action="store_true", help="leave the encoding check out")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--finetune",
        nargs="*",
        default=["difull"],
        choices=list(GRID_CONFIGS),
        help="protocols to fine-tune each variant for (none: --finetune with no name)",
    )
    parser.add_argument("--explainer-scenes", type=int, default=4000)
    parser.add_argument("--explainer-epochs", type=int, default=5)
    parser.add_argument("--evaluator-scenes", type=int, default=15000)
    parser.add_argument("--evaluator-epochs", type=int, default=4)
    parser.add_argument("--train-grids", type=int, default=1600)
    parser.add_argument("--val-grids", type=int, default=200)
    parser.add_argument("--grid-epochs", type=int, default=2)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=200, help="test scenes scored")
    parser.add_argument("--grids", type=int, default=64, help="grids scored per protocol (0: no grid scores)")
    parser.add_argument("--grid-scenes", type=int, default=500, help="single-digit scenes the grids are built from")
    parser.add_argument("--work", default="runs/explainer_objectives", help="folder for the runs and exports")
    parser.add_argument("--out", default=str(RESULTS / "explainer_objectives.json"))
    parser.add_argument("--fresh", action="store_true", help="replace --out instead of merging into it")
    parser.add_argument("--fast", action="store_true", help="a smoke run")
    parser.add_argument("--report", action="store_true", help="print --out's table as markdown; train nothing")
    args = parser.parse_args(argv)
    if args.report:
        results = json.loads(Path(args.out).read_text())["variants"]
        print(markdown(results), end="")
        return results
    os.environ.setdefault("WANDB_MODE", "offline")
    work = Path(args.work)
    if args.fast:
        args.explainer_scenes = args.evaluator_scenes = 32
        args.explainer_epochs = args.evaluator_epochs = args.grid_epochs = 1
        args.val, args.test, args.grid_scenes, args.train_grids, args.val_grids = 16, 8, 200, 8, 4
        args.grids = min(args.grids, 4)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() and not args.fresh else {}
    if previous and previous.get("budget") != budget_of(args):
        raise SystemExit(f"{out} holds runs at another budget {previous.get('budget')}; pass --fresh or another --out")
    start = time.perf_counter()
    evaluator = (
        None if args.no_evaluator else args.evaluator or previous.get("evaluator") or train_evaluator(args, work)
    )
    results = previous.get("variants", {})
    for name in args.variants:
        for seed in args.seeds:
            console.print(f"[bold]{name}[/], seed {seed}")
            run = run_variant(VARIANTS[name], seed, evaluator, args, work / slug(name) / f"seed{seed}")
            entry = results.setdefault(name, {"options": VARIANTS[name], "seeds": {}})
            entry["seeds"][str(seed)] = run
            result = {
                "variants": results,
                "budget": budget_of(args),
                "evaluator": evaluator,
                "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
            }
            write_atomic(out, json.dumps(result, indent=2))  # after every run: a killed sweep keeps what it did
    print_table(results, f"Explainer objectives, {args.explainer_scenes} scenes x {args.explainer_epochs} epochs")
    write_atomic(out.with_suffix(".md"), markdown(results))
    console.print(f"{time.perf_counter() - start:.0f} s")
    return results


def slug(name: str) -> str:
    return "_".join(part.strip("+") for part in name.split())


def budget_of(args: argparse.Namespace) -> dict[str, Any]:
    """The settings every merged run must share."""
    keys = ("classifier", "explainer_scenes", "explainer_epochs", "train_grids", "grid_epochs", "test", "grids")
    return {k: getattr(args, k) for k in keys} | {"evaluator": None if args.no_evaluator else "yes"}


if __name__ == "__main__":
    main()
