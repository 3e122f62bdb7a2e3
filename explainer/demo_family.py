"""``make demo-family``: the other learned explainers on the quickstart classifier, beside the Explainer.

Runs after ``make demo`` (it explains that demo's classifier, ``checkpoints/quickstart/classifier.ckpt``, and
compares with its Explainer export). Stages, each a LightningCLI run of a quickstart config:
  1. real-time saliency (``configs/quickstart/rtsal.yaml``), exported to ``checkpoints/quickstart/rtsal``;
  2. FastSHAP's surrogate (``surrogate.yaml``), then FastSHAP (``fastshap.yaml``), exported to
     ``checkpoints/quickstart/fastshap``;
  3. the learned in-filler (``infiller.yaml``), exported to ``checkpoints/quickstart/infiller``;
  4. the three learned explainers and the references on ``--limit`` test images, and on the first 32 of them
     the perturbation and optimisation baselines (RISE, BBMP, FIDO with blur and with the learned in-fill,
     extremal perturbations), written to ``results/family/results.json`` and ``results.md``; the gradient
     family is in the main demo's results, on the same images;
and a summary table. Run ``python -m explainer.demo_family --help`` for options.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from explainer.atomic import write_atomic
from explainer.cli import finish_loggers, make_cli, run_dir
from explainer.demo import BASELINE_SETS, CONFIGS, DEMO_METHODS, _stage, console, evaluate_quickstart, train_learned

LEARNED = ("explainer", "rtsal", "fastshap")


def train_surrogate(out: Path, classifier: str, extra: list[str]) -> dict[str, Any]:
    """Fits FastSHAP's surrogate for ``classifier``; copies its best checkpoint to ``out/surrogate.ckpt``."""
    cli = make_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "surrogate.yaml"),
            "--model.init_args.teacher",
            classifier,
            "--checkpoint.dirpath",  # the config writes beside the quickstart classifier: here, beside --out's
            str(out),
            *extra,
        ]
    )
    best = cli.trainer.checkpoint_callback.best_model_path
    if not best:
        raise RuntimeError("the surrogate run saved no checkpoint; see the log above")
    target = out / "surrogate.ckpt"
    if Path(best).resolve() != target.resolve():
        shutil.copyfile(best, target)
    finish_loggers(cli.trainer)
    return {"checkpoint": str(target), "run": str(run_dir(cli.trainer))}


def train_infiller(out: Path, extra: list[str]) -> dict[str, Any]:
    """Fits the learned in-filler; its export callback (the config's last) writes ``out/infiller``."""
    folder = out / "infiller"
    cli = make_cli(
        ["fit", "--config", str(CONFIGS / "infiller.yaml"), "--trainer.callbacks.init_args.folder", str(folder), *extra]
    )
    finish_loggers(cli.trainer)
    if not (folder / "config.json").is_file():
        raise RuntimeError("the in-filler run exported nothing; see the log above")
    return {"export": str(folder), "run": str(run_dir(cli.trainer))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the stages and prints a summary table (also written to ``<out>/summary_family.json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="checkpoints/quickstart", help="the main demo's export folder")
    parser.add_argument("--results", default="results/family", help="evaluation folder")
    parser.add_argument("--limit", type=int, default=200, help="test images evaluated")
    parser.add_argument(
        "--baselines",
        choices=list(BASELINE_SETS),
        default="slow",
        help="baselines scored beside the learned explainers: RISE, BBMP, FIDO and extremal perturbations (slow, "
        "the default; `make demo` scores the gradient family), all, or none",
    )
    parser.add_argument("--fast", action="store_true", help="a tiny smoke run (1 epoch, few scenes)")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    out = Path(args.out)
    classifier = out / "classifier.ckpt"
    if not classifier.is_file() or not (out / "explainer" / "config.json").is_file():
        raise SystemExit(
            f"{classifier} or {out / 'explainer'} is missing: run `make demo` first (this demo explains its "
            "classifier and compares with its Explainer), or pass --out with that demo's folder"
        )
    extra = []
    if args.fast:
        extra = ["--trainer.max_epochs", "1", "--data.init_args.train_scenes", "256"]
        extra += ["--data.init_args.val_scenes", "64", "--data.init_args.test_scenes", "64"]
        args.limit = min(args.limit, 32)

    summary: dict[str, Any] = {"stages": {}}
    start = _stage("1/5  real-time saliency: train against the frozen classifier, export")
    rtsal = train_learned(out, str(classifier), extra, "rtsal.yaml", "rtsal")
    summary["stages"]["rtsal"] = time.perf_counter() - start

    start = _stage("2/5  FastSHAP: the surrogate, then the Shapley-value network")
    surrogate = train_surrogate(out, str(classifier), extra)
    summary["stages"]["surrogate"] = time.perf_counter() - start
    start = time.perf_counter()
    fastshap = train_learned(
        out,
        str(classifier),
        [*extra, "--model.init_args.surrogate", surrogate["checkpoint"]],
        "fastshap.yaml",
        "fastshap",
    )
    summary["stages"]["fastshap"] = time.perf_counter() - start

    start = _stage("3/5  the learned in-filler")
    infiller = train_infiller(out, extra)
    summary["stages"]["infiller"] = time.perf_counter() - start

    start = _stage("4/5  every method on the test split (ground-truth classes)")
    fido = DEMO_METHODS["fido"]
    rows = evaluate_quickstart(
        out / "explainer",
        rtsal.pop("datamodule"),
        rtsal.pop("classifier"),
        Path(args.results),
        args.limit,
        baselines=args.baselines,
        learned={"rtsal": Path(rtsal["export"]), "fastshap": Path(fastshap["export"])},
        extra_runs={"fido+learned_fill": ("fido", {**fido, "infill": f"learned={infiller['export']}"})},
    )
    fastshap.pop("datamodule"), fastshap.pop("classifier")
    summary["stages"]["evaluation"] = time.perf_counter() - start
    summary.update(rtsal=rtsal, surrogate=surrogate, fastshap=fastshap, infiller=infiller)

    _stage("5/5  summary")
    write_atomic(out / "summary_family.json", json.dumps(summary, indent=2))
    value = {(r["method"], r["metric"]): r["value"] for r in rows}
    table = Table(title="learned explainers on the quickstart classifier")
    metrics = [
        ("pointing_game.accuracy", "pointing"),
        ("box_iou.c_iou", "IoU boxes"),
        ("saliency.saliency", "saliency ↓"),
        ("insertion_deletion.insertion", "insertion"),
        ("insertion_deletion.deletion", "deletion ↓"),
    ]
    table.add_column("method")
    for _, label in metrics:
        table.add_column(label, justify="right")
    for method in (*LEARNED, "rise", "bbmp", "fido", "fido+learned_fill", "extremal"):
        cells = [value.get((method, metric)) for metric, _ in metrics]
        if any(c is not None for c in cells):
            table.add_row(method, *("-" if c is None else f"{c:.4f}" for c in cells))
    console.print(table)
    for stage, seconds in summary["stages"].items():
        console.print(f"time: {stage} {seconds:.1f} s")
    console.print(f"evaluation: {args.results}/results.json, results.md")
    return summary


if __name__ == "__main__":
    main()
