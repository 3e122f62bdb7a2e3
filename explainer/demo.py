"""``make demo``: the main job on the embedded digit scenes, end to end.

Stages (each a LightningCLI run from the quickstart configs, so the demo is what a user would type):
  1. train the digit-scenes classifier (``configs/quickstart/classifier.yaml``) and test it;
  2. export the classifier to ``checkpoints/quickstart/``;
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

console = Console()
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "quickstart"


def _stage(title: str) -> float:
    console.rule(f"[bold]{title}")
    return time.perf_counter()


def train_classifier(out: Path, extra: list[str]) -> dict[str, Any]:
    """Fits and tests the quickstart classifier; copies its best checkpoint to ``out/classifier.ckpt``."""
    from explainer.cli import make_cli, run_dir

    cli = make_cli(["fit", "--config", str(CONFIGS / "classifier.yaml"), *extra])
    best = cli.trainer.checkpoint_callback.best_model_path
    if not best:
        raise RuntimeError("the classifier run saved no checkpoint; see the log above")
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, weights_only=True)[0]
    out.mkdir(parents=True, exist_ok=True)
    target = out / "classifier.ckpt"
    shutil.copyfile(best, target)
    return {"checkpoint": str(target), "run": str(run_dir(cli.trainer)),
            "test/mAP": results["test/mAP"], "test/F1": results["test/F1"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the demo and prints a summary table.

    Args:
        argv: command-line arguments (see ``--help``).

    Returns:
        The summary (also written to ``<out>/summary.json``).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="checkpoints/quickstart", help="export folder")
    parser.add_argument("--fast", action="store_true", help="a tiny smoke run (1 epoch, few scenes)")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    out = Path(args.out)
    extra = []
    if args.fast:
        extra = ["--trainer.max_epochs", "1", "--data.init_args.train_scenes", "256",
                 "--data.init_args.val_scenes", "64", "--data.init_args.test_scenes", "64"]

    summary: dict[str, Any] = {"stages": {}}
    start = _stage("1/2  classifier: train on digit scenes, then test")
    clf = train_classifier(out, extra)
    summary["classifier"] = clf
    summary["stages"]["classifier"] = time.perf_counter() - start

    start = _stage("2/2  export")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["stages"]["export"] = time.perf_counter() - start

    table = Table(title="quickstart summary")
    table.add_column("stage / metric")
    table.add_column("value", justify="right")
    table.add_row("classifier test mAP", f"{clf['test/mAP']:.4f}")
    table.add_row("classifier test F1", f"{clf['test/F1']:.4f}")
    for stage, seconds in summary["stages"].items():
        table.add_row(f"time: {stage}", f"{seconds:.1f} s")
    console.print(table)
    console.print(f"classifier checkpoint: {clf['checkpoint']}\nrun folder (config, metrics, images): {clf['run']}")
    return summary


if __name__ == "__main__":
    main()
