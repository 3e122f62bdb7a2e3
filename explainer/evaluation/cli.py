"""``evaluate.py``: every attribution method by every metric on a data module's test split, on Lightning.

    python evaluate.py --data configs/data/digits.yaml --classifier checkpoints/quickstart/classifier.ckpt \\
        --methods explainer=checkpoints/quickstart/explainer,rise,gradcam,bbmp --metrics all \\
        --out results/digits --limit 200

A method is ``name`` or ``name=value`` (the value is the explainer's export folder or checkpoint, or the
prototype export of ``prototypes``); ``--option rise.num_masks=1000`` sets any method option. Writes
``results.json`` (rows ``{method, metric, value, n, stderr, targets}``), ``results.md``, ``settings.json``
(what the rows were computed under), ``examples.png`` (maps of every method) and ``curves.png`` (mean
insertion / deletion curves). ``--resume`` keeps the rows of methods already in ``results.json`` (computed
under the same settings) and evaluates only the others.

Every method runs as a LightningModule under ``Trainer.test``: batches stream from the test split, and every
``--trainer.*`` option of ``train.py`` applies (``--trainer.accelerator``, ``--trainer.devices``,
``--trainer.strategy``, ``--trainer.num_nodes``, ``--trainer.precision``, ``--trainer.logger``...). Under DDP
(several devices, ``torchrun``, SLURM) every test image is scored exactly once. ``--devices N`` is short for
``--trainer.devices N --trainer.strategy ddp`` (``cpu:N``: N CPU processes; ``cuda:0,cuda:1``: those GPUs).

``--layer input,final`` runs the gradient methods and Grad-CAM at those layers (ML-Att: ``input``,
``middle``, ``final`` or a dotted module name; rows ``<method>@<layer>``); ``--smooth K`` smooths every
method's maps with a Gaussian of kernel K and sigma K/4 (rows ``<method>+smooth<K>``).

Controlled protocols (Rao et al., CVPR 2022) on grids of the test split's confidently classified images::

    python evaluate.py --data configs/data/digits_single.yaml --classifier checkpoints/quickstart/classifier.ckpt \\
        --protocol difull --methods explainer=checkpoints/quickstart/explainer_difull,gradcam,gradient \\
        --layer input,final --out results/difull --limit 200

score each map by the share of its positive attribution inside the explained cell and write, besides the
tables, ``scores.png`` (box plots) and the AggAtt figures ``aggatt.png`` and ``aggatt/<method>.png``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from rich.console import Console

from explainer.classifiers.frozen import state_hash
from explainer.classifiers.source import ClassifierSpec, check_class_names, load_classifier
from explainer.cli import default_logger
from explainer.evaluation.plan import make_plan, parse_layers, parse_methods
from explainer.evaluation.results import previous_rows
from explainer.evaluation.runner import evaluate_plan
from explainer.evaluation.suite import METRIC_GROUPS, EvaluationSettings, parse_metrics
from explainer.precision import PrecisionOption, resolve_precision
from explainer.protocols import PROTOCOLS, GridDataModule, get_protocol, wrap_for_protocol

TRAINER_FORCED = {"inference_mode": False, "use_distributed_sampler": False}
"""Trainer options the evaluation needs: gradient methods need autograd, and ranks get unpadded shards."""


def classifier_options(source: str, options: list[str]) -> str | dict[str, Any]:
    """The classifier spec of ``--classifier`` and its ``--classifier-option KEY=VALUE`` list (YAML values)."""
    if not options:
        return source
    spec: dict[str, Any] = {"source": source}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--classifier-option takes KEY=VALUE, got {item!r}")
        spec[key.strip()] = yaml.safe_load(value)
    ClassifierSpec.parse(spec)  # names unknown keys
    return spec


def select_metrics(spec: str, has_evaluator: bool) -> list[str]:
    """``--metrics`` as a list: ``all`` leaves the encoding check out without an evaluator, naming it is an error."""
    metrics = parse_metrics(spec)
    if not has_evaluator and "encoding" in metrics:
        if spec != "all":
            raise ValueError("the 'encoding' metric needs --evaluator <checkpoint of an evaluator>")
        metrics.remove("encoding")
    return metrics


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``evaluate.py`` (the ``--trainer.*`` options are parsed by :func:`build_trainer`)."""
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any --trainer.<option> of lightning.pytorch.Trainer is accepted too.",
    )
    add = parser.add_argument
    add("--data", required=True, help="data config YAML (data: {class_path, init_args}), as for train.py")
    add("--data-arg", action="append", default=[], help="data init arg override key=value")
    add(
        "--classifier",
        required=True,
        help="the classifier: a ClassifierModule checkpoint, a TorchScript or .pt2 file, or an architecture name / "
        "package.module:factory with --classifier-option weights=FILE",
    )
    add(
        "--classifier-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a classifier option (YAML value): weights, output, returns, activation, mean, std, input_size, "
        "class_names, allow_partial_weights; e.g. returns=probabilities or mean=[0.5,0.5,0.5]",
    )
    add("--methods", required=True, help="comma-separated methods, e.g. explainer=<path>,rise")
    add("--option", action="append", default=[], help="method option, e.g. rise.num_masks=1000")
    add("--metrics", default="all", help=f"'all' or a comma list of {', '.join(METRIC_GROUPS)}")
    add(
        "--evaluator",
        default=None,
        help="the encoding check's evaluator: a ClassifierModule checkpoint trained on randomly masked images "
        "(configs/quickstart/evaluator.yaml); adds the 'encoding' metric",
    )
    add("--out", required=True, help="output folder")
    add("--limit", type=int, default=None, help="at most this many test images (grids under --protocol)")
    add("--seed", type=int, default=0, help="seed of the methods' randomness")
    add("--targets", choices=["labels", "predictions"], default="labels")
    add("--insertion-step", type=int, default=None, help="pixels per insertion/deletion step")
    add(
        "--tie-order",
        choices=["rise", "raster"],
        default="rise",
        help="order of tied pixels in insertion/deletion (rise: RISE's reference code)",
    )
    add(
        "--saliency-mode",
        choices=["paper", "pairs"],
        default="paper",
        help="saliency metric: one merged mask per image with softmax (the Explainer paper) or per pair",
    )
    add("--pointing-tolerance", type=float, default=None, help="pointing-game radius in pixels")
    add("--difficult-list", default=None, help="the published per-image 'difficult' list of the pointing game")
    add("--resume", action="store_true", help="reuse the rows of methods already evaluated")
    add("--overwrite", action="store_true", help="replace results written under other settings")
    add(
        "--layer",
        default=None,
        help="ML-Att: comma list of layers for the gradient methods and Grad-CAM "
        "(input, middle, final or a module name)",
    )
    add("--smooth", type=int, default=None, metavar="K", help="smooth every map with a Gaussian of odd kernel K")
    add(
        "--protocol",
        choices=PROTOCOLS.names(),
        default=None,
        help="evaluate on grids of the test split under this protocol (localisation score)",
    )
    add("--grid-size", type=int, default=2, help="n of the n x n grids (with --protocol)")
    add("--confidence", type=float, default=0.99, help="least classifier confidence of a grid cell's image")
    add("--device", default="auto", help="one device: auto, cpu, cuda, cuda:1 (short for --trainer.*)")
    add(
        "--devices",
        default=None,
        help="several devices, one process each: a count (2), cpu:N or cuda:0,cuda:1 "
        "(short for --trainer.devices/--trainer.strategy)",
    )
    return parser


def device_options(device: str, devices: str | None) -> list[str]:
    """``--device`` / ``--devices`` as ``--trainer.*`` arguments."""

    def trainer(accelerator: str, count: Any, strategy: str | None = None) -> list[str]:
        out = ["--trainer.accelerator", accelerator, "--trainer.devices", str(count)]
        return out + (["--trainer.strategy", strategy] if strategy else [])

    if devices is not None:
        text = devices.strip().lower()
        if re.fullmatch(r"\d+", text) and int(text) >= 1:
            return trainer("auto", int(text), "ddp" if int(text) > 1 else None)
        if match := re.fullmatch(r"cpu(?::(\d+))?", text):
            count = int(match[1] or 1)
            if count >= 1:
                return trainer("cpu", count, "ddp" if count > 1 else None)
        if re.fullmatch(r"cuda(:\d+)?(,cuda(:\d+)?)*", text):
            ids = [int(item.partition(":")[2] or 0) for item in text.split(",")]
            if len(set(ids)) == len(ids):
                return trainer("gpu", json.dumps(ids), "ddp" if len(ids) > 1 else None)
        raise ValueError(
            f"--devices '{devices}': use a count (2), cpu:N (N CPU processes) or a list of GPUs (cuda:0,cuda:1)"
        )
    if device == "auto":
        return []
    if device == "cpu":
        return trainer("cpu", 1)
    if match := re.fullmatch(r"cuda(?::(\d+))?", device):
        return trainer("gpu", json.dumps([int(match[1] or 0)]))
    raise ValueError(f"--device '{device}': use auto, cpu, cuda or cuda:<index>")


def _parser_for(out: Path) -> LightningArgumentParser:
    parser = LightningArgumentParser(prog="evaluate.py")
    parser.add_class_arguments(
        pl.Trainer, "trainer", fail_untyped=False, instantiate=False, sub_configs=True, skip={"precision"}
    )
    parser.add_argument("--trainer.precision", type=PrecisionOption, default=None)  # also auto-mixed
    parser.add_subclass_arguments(pl.LightningDataModule, "data", required=True)
    parser.set_defaults(
        {
            "trainer.logger": default_logger(save_dir=str(out), name="logs"),
            "trainer.default_root_dir": str(out),
            "trainer.enable_model_summary": False,
            "trainer.enable_checkpointing": False,
        }
    )
    return parser


def build_trainer_and_data(data: dict[str, Any], trainer_args: list[str], out: Path) -> tuple[pl.Trainer, Any]:
    """The trainer (``--trainer.*`` options, with :data:`TRAINER_FORCED`) and the data module (its class must
    be a LightningDataModule), both validated by jsonargparse as ``train.py`` does."""
    unknown = [a for a in trainer_args if a.startswith("-") and not a.startswith("--trainer.")]
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown}; evaluate.py takes its own options (see --help) and "
            "--trainer.<option> for the Lightning Trainer"
        )
    parser = _parser_for(out)
    config = parser.parse_args(["--data", json.dumps(data), *trainer_args])
    init = parser.instantiate(config)
    options = {k: v for k, v in dict(init.trainer).items() if k not in TRAINER_FORCED}
    options["precision"] = resolve_precision(options.get("precision"))
    trainer = pl.Trainer(**options, **TRAINER_FORCED)
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        raise ValueError(
            f"--trainer.strategy {config.trainer.strategy}: evaluate.py needs every process to run "
            "the script (its rows stay in the process that computed them); use --trainer.strategy "
            "ddp, torchrun or srun"
        )
    return trainer, init.data


def data_spec(path: str, overrides: list[str]) -> dict[str, Any]:
    """The data module config of a YAML file (``data: {class_path, init_args}``) with ``key=value`` overrides."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--data {path}: no such config file (see configs/data/)")
    content = yaml.safe_load(file.read_text()) or {}
    spec = content.get("data", content) if isinstance(content, dict) else None
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{path} holds no data module (expected 'data: {{class_path: ..., init_args: ...}}')")
    args = dict(spec.get("init_args") or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--data-arg '{item}' must be key=value")
        args[key] = yaml.safe_load(value)
    return {"class_path": spec["class_path"], "init_args": args}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs the evaluation (see the module docstring); returns the rows."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(
            f"--limit must be a positive number of images, got {args.limit} (leave it out for the whole test split)"
        )
    if args.smooth is not None and (args.smooth < 1 or args.smooth % 2 == 0):
        parser.error(f"--smooth needs a positive odd kernel size, got {args.smooth}")
    if args.protocol is not None and args.metrics not in ("all", "localisation"):
        parser.error(
            f"under --protocol the metric is the localisation score ('all' or 'localisation'), got '{args.metrics}'"
        )
    try:
        methods = parse_methods(args.methods, args.option)
        metrics = ["localisation"] if args.protocol else select_metrics(args.metrics, args.evaluator is not None)
        shorthand = device_options(args.device, args.devices)
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out)
    spec = data_spec(args.data, args.data_arg)
    trainer, datamodule = build_trainer_and_data(spec, [*shorthand, *rest], out)
    settings = EvaluationSettings(
        metrics=metrics,
        targets=args.targets,
        limit=args.limit,
        pointing_tolerance=args.pointing_tolerance,
        difficult_list=args.difficult_list,
        insertion_step=args.insertion_step,
        tie_order=args.tie_order,
        saliency_mode=args.saliency_mode,
    )
    try:
        classifier_spec = classifier_options(args.classifier, args.classifier_option)
    except ValueError as error:
        parser.error(str(error))
    if args.protocol is not None and not isinstance(classifier_spec, str):
        parser.error("--protocol wraps a ClassifierModule checkpoint; --classifier-option does not apply to it")
    classifier = load_classifier(classifier_spec, num_classes=datamodule.num_classes)
    check_class_names(classifier, getattr(datamodule, "class_names", None), datamodule.num_classes)
    if hasattr(datamodule, "mean"):
        classifier.set_data_normalization(datamodule.mean, datamodule.std)
    if args.evaluator is not None:
        settings.evaluator = load_classifier(args.evaluator, num_classes=datamodule.num_classes)
        check_class_names(settings.evaluator, getattr(datamodule, "class_names", None), datamodule.num_classes)
        if hasattr(datamodule, "mean"):
            settings.evaluator.set_data_normalization(datamodule.mean, datamodule.std)
    record = {
        "classifier": classifier_spec,
        "classifier_sha256": state_hash(classifier),
        "data": spec,
        "metrics": metrics,
        "targets": args.targets,
        "limit": args.limit,
        "seed": args.seed,
        "pointing_tolerance": args.pointing_tolerance or "per image (15 px, or 15/224 of the shorter side)",
        "difficult": f"list {args.difficult_list}" if args.difficult_list else "coverage rule",
        "tie_order": args.tie_order,
        "saliency_mode": args.saliency_mode,
        "insertion_step": args.insertion_step,
        "protocol": args.protocol,
        "precision": str(trainer.precision),
    }
    if settings.evaluator is not None:
        record.update(evaluator=args.evaluator, evaluator_sha256=state_hash(settings.evaluator))
    if args.protocol is not None:
        protocol = get_protocol(args.protocol)
        record.update(grid_size=args.grid_size, confidence=args.confidence, targets=protocol.explained(args.grid_size))
        datamodule = GridDataModule(
            datamodule,
            args.classifier,
            protocol=args.protocol,
            grid_size=args.grid_size,
            confidence=args.confidence,
            test_grids=args.limit or 200,
            seed=args.seed,
            batch_size=datamodule.batch_size,
            num_workers=datamodule.num_workers,
        )
        settings.limit = None  # --limit is the number of grids
        classifier = wrap_for_protocol(datamodule.classifier(), args.protocol, args.grid_size)
    rows = previous_rows(out, args.resume, record, overwrite=args.overwrite)
    plan = make_plan(methods, settings, parse_layers(args.layer), args.smooth)
    console = Console(quiet=not trainer.is_global_zero)
    if args.protocol is not None:
        datamodule.setup("test")
        console.print(
            f"{args.protocol}: {len(datamodule.datasets['test'])} {args.grid_size}x{args.grid_size} "
            f"grids, cell images at confidence >= {datamodule.thresholds['test']}"
        )
    outcome = evaluate_plan(
        plan, trainer, classifier, datamodule, out, rows, record, args.protocol, args.grid_size, args.seed, console
    )
    return outcome.rows


__all__ = ["build_parser", "build_trainer_and_data", "data_spec", "device_options", "main"]
