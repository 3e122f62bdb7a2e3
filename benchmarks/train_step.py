"""The Explainer's training step against its floor, and the quickstart epoch, on this machine's CPU.

The floor is the arithmetic a step cannot avoid, each part timed alone on the same batch:
  * the mask network's forward and backward;
  * the classifier's forward and backward to its input, on the masked and the inverse images (one pass of
    2B images, as the step runs it), and with a per-class term (the quickstart's ``class_deletion``) on the
    sampled class's kept and removed images too (4B images in the one pass).
The step is then timed three ways:
  * ``step``: ``ExplainerModule.training_step`` + backward + Adam step in a plain loop (the module's own
    overhead: targets, masks, loss terms, logging calls);
  * ``fit``: seconds per training batch inside ``Trainer.fit`` with the quickstart config's callbacks and a
    progress bar (data loading, hooks, logging, the non-finite guard);
  * ``epoch``: one whole epoch of ``configs/quickstart/explainer.yaml`` (training and validation) through
    ``train.py``, with ``--epoch``.

The classifier is digitnet with random weights (seed 0); the data are digit scenes at the config's size.

Usage::

    python benchmarks/train_step.py                    # writes benchmarks/results/train_step.json
    python benchmarks/train_step.py --epoch            # also one quickstart epoch through train.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from _shared import untrained_classifier_checkpoint
from rich.console import Console
from rich.table import Table

from explainer.atomic import write_atomic
from explainer.callbacks import ExplainerMetrics, MaskPanel
from explainer.data.digits import DigitScenesDataModule
from explainer.modules import ExplainerModule

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "quickstart" / "explainer.yaml"
console = Console()


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quickstart_module(classifier: Path) -> tuple[ExplainerModule, DigitScenesDataModule]:
    """The quickstart Explainer and data module, as the config builds them."""
    config = yaml.safe_load(CONFIG.read_text())
    data = DigitScenesDataModule(**config["data"]["init_args"])
    args = {**config["model"]["init_args"], "classifier": str(classifier)}
    return ExplainerModule(**args, num_classes=10, class_names=[str(i) for i in range(10)]), data


class BatchTimer(pl.Callback):
    """Wall time between the starts of consecutive training batches (data loading and hooks included)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_train_epoch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def per_batch(self, skip: int = 2) -> float:
        gaps = [b - a for a, b in zip(self.starts[skip:-1], self.starts[skip + 1 :], strict=True)]
        return statistics.median(gaps)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    module, data = quickstart_module(untrained_classifier_checkpoint(work))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.setup("fit")
    images = batch.image
    b = len(images)

    def mask_pass() -> None:
        module.mask_net.zero_grad(set_to_none=True)
        module.mask_net(images).sum().backward()

    rows = 4 if module.weights.needs_class_rows() else 2  # the rows of the step's one classifier pass
    pair = torch.cat([images] * rows).requires_grad_(True)

    def classifier_pass() -> None:
        pair.grad = None
        module.classifier(pair).sum().backward()

    optimizer = torch.optim.Adam(
        [p for p in module.mask_net.parameters() if p.requires_grad], lr=module.hparams.lr
    )  # the config's schedule needs a Trainer; a constant rate costs the same per step
    module.log = lambda *a, **k: None  # outside a Trainer, logging is a no-op

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module.training_step(batch, 0).backward()
        optimizer.step()

    floor_mask = median_seconds(mask_pass, args.repeats)
    floor_classifier = median_seconds(classifier_pass, args.repeats)
    step_seconds = median_seconds(step, args.repeats)

    module2, data2 = quickstart_module(work / "classifier.ckpt")
    timer = BatchTimer()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=args.fit_batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(work),
        callbacks=[ExplainerMetrics(), MaskPanel(), timer],
    )  # the config's, less the export
    trainer.fit(module2, datamodule=data2)
    fit_seconds = timer.per_batch()

    floor = floor_mask + floor_classifier
    result = {
        "batch_size": b,
        "image_size": int(images.shape[-1]),
        "seconds": {
            "floor_mask_net_fwd_bwd": floor_mask,
            f"floor_classifier_fwd_bwd_{rows}B": floor_classifier,
            "floor": floor,
            "step": step_seconds,
            "fit_per_batch": fit_seconds,
        },
        "ratios": {"step / floor": step_seconds / floor, "fit / floor": fit_seconds / floor},
    }
    if args.epoch:
        result["seconds"]["quickstart_epoch"] = quickstart_epoch(work)
    return result


def quickstart_epoch(work: Path) -> float:
    """One epoch (training + validation) of the quickstart config through ``train.py``, in seconds."""
    from explainer.cli import make_cli

    start = time.perf_counter()
    make_cli(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--model.init_args.classifier",
            str(work / "classifier.ckpt"),
            "--trainer.max_epochs",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(work / "run"),
            "--trainer.callbacks.init_args.folder",
            str(work / "export"),
        ]
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats of each part")
    parser.add_argument("--fit-batches", type=int, default=20, help="training batches timed inside Trainer.fit")
    parser.add_argument("--epoch", action="store_true", help="also time one quickstart epoch through train.py")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_step.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        result = measure(args, Path(work))
    result["machine"] = {
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    table = Table(title=f"Explainer training step, batch {result['batch_size']} at {result['image_size']} px")
    table.add_column("what")
    table.add_column("seconds", justify="right")
    table.add_column("x floor", justify="right")
    floor = result["seconds"]["floor"]
    for name, seconds in result["seconds"].items():
        table.add_row(name, f"{seconds:.4f}", f"{seconds / floor:.2f}" if name != "quickstart_epoch" else "")
    console.print(table)
    write_atomic(Path(args.out), json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
