"""``evaluate.py``: every attribution method by every metric on a data module's test split.

    python evaluate.py --data configs/data/digits.yaml --classifier checkpoints/quickstart/classifier.ckpt \\
        --methods explainer=checkpoints/quickstart/explainer,rise,gradcam,bbmp --metrics all \\
        --out results/digits --limit 200

A method is ``name`` or ``name=value`` (the value is the explainer's export folder or checkpoint, or the
prototype export of ``prototypes``); ``--option rise.num_masks=1000`` sets any method option. Writes
``results.json`` (rows ``{method, metric, value, n, stderr, targets}``), ``results.md``, ``examples.png``
(maps of every method) and ``curves.png`` (mean insertion / deletion curves). ``--resume`` keeps the rows
of methods already in ``results.json`` and evaluates only the others.

``--devices`` splits the test batches across devices, one process each (see
:mod:`explainer.distributed_eval`): ``2`` (two GPUs when CUDA has them, else two CPU processes), ``cpu:2``
or ``cuda:0,cuda:1``; deterministic methods get the rows of a single process. One device runs as without it.

``--layer input,final`` runs the gradient methods and Grad-CAM at those layers (ML-Att: ``input``,
``middle``, ``final`` or a dotted module name; rows ``<method>@<layer>``); ``--smooth K`` smooths every
method's maps with a Gaussian of kernel K and sigma K/4 (rows ``<method>+smooth<K>``).

Controlled protocols (Rao et al., CVPR 2022) on grids of the test split's confidently classified images::

    python evaluate.py --data configs/data/digits_single.yaml --classifier checkpoints/quickstart/classifier.ckpt \
        --protocol difull --methods explainer=checkpoints/quickstart/explainer_difull,gradcam,gradient \
        --layer input,final --out results/difull --limit 200

score each map by the share of its positive attribution inside the explained cell and write, besides the
tables, ``scores.png`` (box plots) and the AggAtt figures ``aggatt.png`` and ``aggatt/<method>.png``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from explainer.evaluation import METRIC_GROUPS, EvaluationSettings, parse_metrics
from explainer.protocol_eval import expand_methods

VALUE_OPTIONS = {"explainer": "path", "prototypes": "prototypes", "smooth": "method"}


def parse_methods(spec: str, options: list[str]) -> dict[str, dict[str, Any]]:
    """``"explainer=path,rise"`` and ``["rise.num_masks=1000"]`` to ``{name: options}``, validated."""
    from explainer.methods import available_methods

    methods: dict[str, dict[str, Any]] = {}
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        name, _, value = item.partition("=")
        if name not in available_methods():
            raise ValueError(f"unknown method '{name}'; valid methods: {', '.join(available_methods())}")
        methods[name] = {VALUE_OPTIONS[name]: value} if value and name in VALUE_OPTIONS else {}
    for option in options:
        key, _, value = option.partition("=")
        name, _, field = key.partition(".")
        if name not in methods or not field or not value:
            raise ValueError(f"--option '{option}' must be <method>.<option>=<value> for a method in --methods")
        methods[name][field] = yaml.safe_load(value)
    if not methods:
        raise ValueError("--methods names no method")
    return methods


def build_datamodule(path: str, overrides: list[str]) -> Any:
    """A data module from a config YAML (``data: {class_path, init_args}``) plus ``key=value`` overrides."""
    content = yaml.safe_load(Path(path).read_text()) or {}
    spec = content.get("data", content)
    if "class_path" not in spec:
        raise ValueError(f"{path} holds no data module (expected 'data: {{class_path: ..., init_args: ...}}')")
    args = dict(spec.get("init_args") or {})
    for item in overrides:
        key, _, value = item.partition("=")
        args[key] = yaml.safe_load(value)
    module_name, _, cls_name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module_name), cls_name)(**args)


def previous_rows(out: Path, resume: bool) -> list[dict[str, Any]]:
    """The rows already in ``out/results.json`` for ``--resume`` (none when there is no such file).

    Raises:
        FileExistsError: the file exists and ``resume`` is off.
    """
    if not (out / "results.json").exists():
        return []
    if not resume:
        raise FileExistsError(f"{out / 'results.json'} exists; pass --resume to reuse it or choose another --out")
    return json.loads((out / "results.json").read_text())


def parse_layers(spec: str | None) -> list[str] | None:
    """``--layer input,final`` as a list (``None`` without the option)."""
    return [s.strip() for s in spec.split(",") if s.strip()] if spec else None


def resolve_device(spec: str) -> torch.device:
    """``--device``: ``auto`` is CUDA when available, else the CPU."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if spec == "auto" else spec)


def pending_methods(methods: dict[str, dict[str, Any]], args: argparse.Namespace, done: set[str],
                    console: Any | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(row name, method name, options)`` of every method variant (``--layer``, ``--smooth``) not in ``done``;
    prints the expansion notes and the reused methods on ``console`` when one is given."""
    for name, method_name, options, notes in expand_methods(methods, parse_layers(args.layer), args.smooth):
        if console is not None:
            for note in notes:
                console.print(f"[yellow]{note}")
        if name in done:
            if console is not None:
                console.print(f"{name}: reusing the rows in {Path(args.out) / 'results.json'}")
            continue
        yield name, method_name, options


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs the evaluation (see the module docstring); returns the rows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data config YAML")
    parser.add_argument("--data-arg", action="append", default=[], help="data init arg override key=value")
    parser.add_argument("--classifier", required=True, help="ClassifierModule checkpoint")
    parser.add_argument("--methods", required=True, help="comma-separated methods, e.g. explainer=<path>,rise")
    parser.add_argument("--option", action="append", default=[], help="method option, e.g. rise.num_masks=1000")
    parser.add_argument("--metrics", default="all", help=f"'all' or a comma list of {', '.join(METRIC_GROUPS)}")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--limit", type=int, default=None, help="at most this many test images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the methods' randomness")
    parser.add_argument("--targets", choices=["labels", "predictions"], default="labels")
    parser.add_argument("--insertion-step", type=int, default=None, help="pixels per insertion/deletion step")
    parser.add_argument("--pointing-tolerance", type=float, default=None, help="pointing-game radius in pixels")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--resume", action="store_true", help="reuse the rows of methods already evaluated")
    parser.add_argument("--layer", default=None,
                        help="ML-Att: comma list of layers for the gradient methods and Grad-CAM "
                             "(input, middle, final or a module name)")
    parser.add_argument("--smooth", type=int, default=None, metavar="K",
                        help="smooth every map with a Gaussian of odd kernel K and sigma K/4")
    parser.add_argument("--protocol", choices=["gridpg", "difull", "dipart"], default=None,
                        help="evaluate on grids of the test split under this protocol (localisation score)")
    parser.add_argument("--grid-size", type=int, default=2, help="n of the n x n grids (with --protocol)")
    parser.add_argument("--confidence", type=float, default=0.99,
                        help="least classifier confidence of a grid cell's image (with --protocol)")
    parser.add_argument("--devices", default=None, help="several devices, one process each: a count (2), "
                        "cpu:N (N CPU processes) or a list of GPUs (cuda:0,cuda:1)")
    args = parser.parse_args(argv)
    if args.smooth is not None and (args.smooth < 1 or args.smooth % 2 == 0):
        parser.error(f"--smooth needs a positive odd kernel size, got {args.smooth}")
    if args.protocol is not None:
        if args.devices is not None:
            parser.error("--devices is not supported with --protocol yet (the grid protocols run in one process)")
        return protocol_main(args)

    from rich.console import Console
    from rich.progress import Progress

    from explainer.classifiers import FrozenClassifier
    from explainer.evaluation import collect_batches, evaluate_method, save_example_grid, write_results
    from explainer.methods import build_method

    methods = parse_methods(args.methods, args.option)
    settings = EvaluationSettings(metrics=parse_metrics(args.metrics), targets=args.targets, limit=args.limit,
                                  pointing_tolerance=args.pointing_tolerance, insertion_step=args.insertion_step)
    out = Path(args.out)
    rows = previous_rows(out, args.resume)
    done = {r["method"] for r in rows}
    if args.devices is not None:  # several devices: one process each (one device: the path below)
        from explainer.distributed_eval import evaluate_on_devices

        if (distributed := evaluate_on_devices(args, methods, settings, rows)) is not None:
            return distributed
    device = resolve_device(args.device)
    datamodule = build_datamodule(args.data, args.data_arg)
    classifier = FrozenClassifier.from_checkpoint(args.classifier, num_classes=datamodule.num_classes).to(device)
    batches = collect_batches(datamodule, args.limit, device)
    console = Console()
    examples = {}
    with Progress(console=console) as bar:
        for name, method_name, options in pending_methods(methods, args, done, console):
            torch.manual_seed(args.seed)
            method = build_method(method_name, classifier, **options).to(device)
            task = bar.add_task(f"{name}", total=sum(len(b) for b in batches))
            method_rows, examples[name] = evaluate_method(
                name, method, batches, classifier, datamodule.num_classes, settings,
                progress=lambda n, t=task: bar.advance(t, n))
            rows += method_rows
            write_results(rows, out)  # after every method, so an interrupted run can --resume
    write_results(rows, out)
    if examples:
        save_example_grid(examples, datamodule, out / "examples.png", datamodule.class_names)
        save_curves(methods, examples, classifier, out / "curves.png", args.insertion_step)
    console.print((out / "results.md").read_text())
    return rows


def protocol_main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``evaluate.py --protocol``: localisation scores, box plots and AggAtt on grids of the test split."""
    from rich.console import Console
    from rich.progress import Progress

    from explainer.aggatt import aggatt_bins
    from explainer.classifiers.protocols import wrap_for_protocol
    from explainer.data.grid import GridDataModule
    from explainer.evaluation import collect_batches, write_results
    from explainer.methods import build_method
    from explainer.protocol_eval import (
        evaluate_grid_method,
        metric_rows,
        save_aggatt_figures,
        save_score_boxplot,
    )

    if args.metrics not in ("all", "localisation"):
        raise ValueError(f"under --protocol the metric is the localisation score ('all' or 'localisation'), got "
                         f"'{args.metrics}'")
    methods = parse_methods(args.methods, args.option)
    out = Path(args.out)
    rows = previous_rows(out, args.resume)
    done = {r["method"] for r in rows}
    device = resolve_device(args.device)
    source = build_datamodule(args.data, args.data_arg)
    grids = GridDataModule(source, args.classifier, protocol=args.protocol, grid_size=args.grid_size,
                           confidence=args.confidence, test_grids=args.limit or 200, seed=args.seed,
                           batch_size=source.batch_size)
    batches = collect_batches(grids, None, device)
    wrapped = wrap_for_protocol(grids.classifier(), args.protocol, args.grid_size).to(device)
    console = Console()
    console.print(f"{args.protocol}: {sum(len(b) for b in batches)} {args.grid_size}x{args.grid_size} grids, cell "
                  f"images at confidence >= {grids.thresholds['test']}")
    aggregates: dict[str, torch.Tensor] = {}
    distributions: dict[str, torch.Tensor] = {}
    if args.resume and (out / "distributions.pt").exists():  # the figures keep the methods already evaluated
        saved = torch.load(out / "distributions.pt", weights_only=True)
        methods_done = {r["method"] for r in rows}
        distributions = {k: v for k, v in saved["scores"].items() if k in methods_done}
        aggregates = {k: v for k, v in saved["aggatt"].items() if k in methods_done}
    with Progress(console=console) as bar:
        for name, method_name, options in pending_methods(methods, args, done, console):
            torch.manual_seed(args.seed)
            method = build_method(method_name, wrapped, **options).to(device)
            task = bar.add_task(name, total=sum(len(b) for b in batches))
            metric, maps, scores, seconds = evaluate_grid_method(
                method, batches, args.protocol, args.grid_size, progress=lambda n, t=task: bar.advance(t, n))
            rows += metric_rows(name, args.protocol, metric, seconds, sum(len(b) for b in batches))
            distributions[name] = metric.scores().cpu()
            aggregates[name] = aggatt_bins(maps, scores)
            write_results(rows, out)
    write_results(rows, out)
    if distributions:
        order = [entry[0] for entry in expand_methods(methods, parse_layers(args.layer), args.smooth)]
        rank = {name: order.index(name) if name in order else len(order) for name in distributions}
        distributions = dict(sorted(distributions.items(), key=lambda kv: rank[kv[0]]))
        aggregates = {name: aggregates[name] for name in distributions if name in aggregates}
        save_score_boxplot(distributions, out / "scores.png", args.protocol, args.grid_size)
        save_aggatt_figures(aggregates, out, args.grid_size, args.protocol)
        torch.save({"scores": distributions, "aggatt": aggregates}, out / "distributions.pt")
    console.print((out / "results.md").read_text())
    return rows


def save_curves(methods: dict[str, Any], examples: dict[str, dict[str, torch.Tensor]], classifier: Any,
                path: Path, step: int | None) -> Path:
    """Mean insertion and deletion curves of each method on its example images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from explainer.callbacks.images import save_figure
    from explainer.metrics.causal import insertion_deletion_curves

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    device = next(classifier.parameters()).device
    for name, ex in examples.items():
        valid = ex["classes"][:, :1] >= 0
        if not valid.any():
            continue
        curves = insertion_deletion_curves(classifier, ex["images"].to(device), ex["maps"][:, :1].to(device),
                                           ex["classes"][:, :1].to(device), step=step)
        for ax, mode in zip(axes, ("insertion", "deletion"), strict=True):
            curve = curves[mode][valid[:, 0].to(device), 0].mean(0).cpu()
            ax.plot(torch.linspace(0, 1, len(curve)), curve, label=name)
    for ax, mode in zip(axes, ("insertion", "deletion"), strict=True):
        ax.set_title(f"{mode} (mean over example images)")
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("class probability")
    axes[1].legend(fontsize=7)
    return save_figure(fig, path)
