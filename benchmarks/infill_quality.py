"""How good is the learned in-filler? It against the heuristic fills, on held-out digit scenes.

For each fill (``learned`` from ``--infiller``, ``mean``, ``blur``, ``local_mean``, ``random``) and each kind of
keep mask (``blob``: :func:`~explainer.ops.random_blob_masks` keeping 10-90% of the scene; ``grid``:
:func:`~explainer.ops.random_grid_masks`, 2-16 cells a side dropping 10-90%; the masks are drawn from a fixed
seed, the same for every fill), on ``--images`` test scenes (a split the in-filler never saw):

(a) ``l1_hole``: the mean absolute error inside the dropped region, in normalised units;
(b) how far the quickstart classifier's outputs on the in-filled images ``keep * x + (1 - keep) * fill`` move
    from those on the clean images: ``prob_shift`` (mean absolute difference of the class probabilities),
    ``kl`` (Bernoulli KL of each class, clean || in-filled, averaged over classes) and ``same_labels`` (share
    of scenes whose predicted label set, p > 0.5, is unchanged);
(c) FIDO (SSR) with the learned in-fill against FIDO with blur (its default), scored by ``evaluate.py`` on
    ``--fido-images`` test scenes: the saliency metric and insertion / deletion AUC.

Writes ``benchmarks/results/infill_quality.json``, ``.md`` and ``.png`` (example in-fills of every fill), atomically,
and prints the table::

    python train.py fit --config configs/quickstart/infiller.yaml     # checkpoints/quickstart/infiller
    python benchmarks/infill_quality.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from explainer.atomic import write_atomic  # noqa: E402
from explainer.classifiers.source import load_classifier  # noqa: E402
from explainer.data.digits import DigitScenesDataModule  # noqa: E402
from explainer.evaluation.cli import main as evaluate  # noqa: E402
from explainer.export_infiller import infill_panel_figure  # noqa: E402
from explainer.methods.infill import build_infill  # noqa: E402
from explainer.ops import random_blob_masks, random_grid_masks  # noqa: E402
from explainer.viz import save_figure  # noqa: E402

HEURISTIC = ["mean", "blur", "local_mean", "random"]
MASKS = {
    "blob": lambda n, size, gen: random_blob_masks(n, size, (0.1, 0.9), (2, 8), generator=gen),
    "grid": lambda n, size, gen: random_grid_masks(n, size, (0.1, 0.9), (2, 16), generator=gen),
}
FIDO_METRICS = ["saliency.saliency", "insertion_deletion.insertion", "insertion_deletion.deletion"]


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``KL(Bernoulli(p) || Bernoulli(q))`` per element."""
    p, q = p.clamp(eps, 1 - eps), q.clamp(eps, 1 - eps)
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()


def fill_scores(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    """(a) and (b): ``{mask kind: {fill: {metric: value}}}``."""
    dm = DigitScenesDataModule(image_size=64, test_scenes=args.images, batch_size=50, seed=args.data_seed)
    dm.setup("test")
    classifier = load_classifier(args.classifier, num_classes=dm.num_classes)
    classifier.set_data_normalization(dm.mean, dm.std)
    fills = {"learned": build_infill(f"learned={args.infiller}"), **{n: build_infill(n) for n in HEURISTIC}}
    for fill in fills.values():
        fill.check_data(dm.image_size, dm.mean, dm.std)
    sums: dict[str, dict[str, dict[str, float]]] = {k: {f: {} for f in fills} for k in MASKS}
    shown: dict[str, dict[str, torch.Tensor]] = {k: {} for k in MASKS}
    count = 0
    for batch_index, batch in enumerate(dm.test_dataloader()):
        images = batch.image
        with torch.no_grad():
            clean = classifier.probabilities(classifier(images))
        for kind, draw in MASKS.items():
            gen = torch.Generator().manual_seed(args.seed * 1000 + batch_index)
            keep = draw(len(images), tuple(images.shape[-2:]), gen)
            for name, infill in fills.items():
                fill = infill(images, keep, torch.Generator().manual_seed(args.seed))
                filled = keep * images + (1 - keep) * fill
                with torch.no_grad():
                    probs = classifier.probabilities(classifier(filled))
                dropped = (1 - keep).sum((1, 2, 3)) * 3
                per_image_l1 = ((filled - images).abs() * (1 - keep)).sum((1, 2, 3)) / dropped.clamp_min(1)
                values = {
                    "l1_hole": per_image_l1.sum(),
                    "prob_shift": (probs - clean).abs().mean(1).sum(),
                    "kl": bernoulli_kl(clean, probs).mean(1).sum(),
                    "same_labels": ((probs > 0.5) == (clean > 0.5)).all(1).float().sum(),
                }
                for key, value in values.items():
                    sums[kind][name][key] = sums[kind][name].get(key, 0.0) + float(value)
                if batch_index == 0:
                    shown[kind][name] = filled[: args.figure_images]
            if batch_index == 0:
                shown[kind]["keep"] = keep[: args.figure_images]
        if batch_index == 0 and args.figure:
            save_figure(infill_figure(images[: args.figure_images], shown, dm.mean, dm.std), args.figure)
        count += len(images)
    return {k: {f: {m: v / count for m, v in ms.items()} for f, ms in fs.items()} for k, fs in sums.items()}


def infill_figure(images: torch.Tensor, shown: dict[str, dict[str, torch.Tensor]], mean: Any, std: Any) -> Any:
    """Rows: the same scenes under a blob mask, then under a grid mask; columns: image, mask, masked, fills."""
    keep = torch.cat([shown[k]["keep"] for k in MASKS])
    fills = {name: torch.cat([shown[k][name] for k in MASKS]) for name in shown[next(iter(MASKS))] if name != "keep"}
    return infill_panel_figure(
        images.repeat(len(MASKS), 1, 1, 1), keep, fills, tuple(mean), tuple(std), title="blob masks, then grid masks"
    )


def fido_scores(args: argparse.Namespace, work: Path) -> dict[str, dict[str, tuple[float, float | None, int]]]:
    """(c): FIDO with each in-fill, scored by evaluate.py on the same test scenes."""
    out: dict[str, dict[str, tuple[float, float | None, int]]] = {}
    for name, infill in [("blur", "blur"), ("learned", f"learned={args.infiller}")]:
        rows = evaluate(
            [
                "--data", str(REPO / "configs/data/digits.yaml"), "--data-arg", f"test_scenes={args.fido_images}",
                "--classifier", args.classifier, "--methods", "fido", "--option", f"fido.infill={infill}",
                "--option", f"fido.iterations={args.fido_iterations}", "--metrics", "saliency,insertion_deletion",
                "--limit", str(args.fido_images), "--out", str(work / f"fido_{name}"), "--overwrite",
                "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
            ]
        )  # fmt: skip
        out[name] = {r["metric"]: (r["value"], r["stderr"], r["n"]) for r in rows if r["metric"] in FIDO_METRICS}
    return out


def markdown(result: dict[str, Any]) -> str:
    """The tables of a result, in markdown."""
    lines = [
        f"Held-out digit scenes: {result['settings']['images']} test scenes at 64 px; in-filler "
        f"`{result['settings']['infiller']}`, classifier `{result['settings']['classifier']}`.",
        "",
        "| masks | fill | L1 in hole (lower) | prob. shift (lower) | KL (lower) | same labels (higher) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, fills in result["fills"].items():
        for name, m in fills.items():
            lines.append(
                f"| {kind} | {name} | {m['l1_hole']:.3f} | {m['prob_shift']:.4f} | {m['kl']:.4f} | "
                f"{m['same_labels']:.3f} |"
            )
    if result.get("fido"):
        s = result["settings"]
        lines += [
            "",
            f"FIDO (SSR, {s['fido_iterations']} iterations) on {s['fido_images']} test scenes, scored by evaluate.py "
            "(mean +- standard error over the explained classes):",
            "",
            "| FIDO fill | saliency (lower) | insertion AUC (higher) | deletion AUC (lower) |",
            "| --- | --- | --- | --- |",
        ]
        for name, metrics in result["fido"].items():
            cells = []
            for metric in FIDO_METRICS:
                value, stderr, _ = metrics.get(metric, (float("nan"), None, 0))
                shown = stderr is not None and stderr == stderr  # a NaN standard error (one image) is not shown
                cells.append(f"{value:.4f}" + (f" +- {stderr:.4f}" if shown else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--infiller", default="checkpoints/quickstart/infiller", help="in-filler export folder")
    parser.add_argument("--classifier", default="checkpoints/quickstart/classifier.ckpt")
    parser.add_argument("--images", type=int, default=500, help="test scenes for (a) and (b)")
    parser.add_argument("--fido-images", type=int, default=16, help="test scenes for (c); 0 skips FIDO")
    parser.add_argument("--fido-iterations", type=int, default=100, help="FIDO iterations (paper: 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks and the random fill")
    parser.add_argument("--data-seed", type=int, default=0, help="scene seed (the data config's)")
    parser.add_argument("--work", default="runs/infill_quality", help="evaluate.py's output folders")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/infill_quality.json"))
    parser.add_argument(
        "--figure", default=str(REPO / "benchmarks/results/infill_quality.png"), help="PNG of example in-fills"
    )
    parser.add_argument("--figure-images", type=int, default=4, help="scenes in the figure (per mask kind)")
    args = parser.parse_args(argv)
    for path, what, config in [
        (args.classifier, "the quickstart classifier", "classifier"),
        (args.infiller, "the in-filler export", "infiller"),
    ]:
        if not Path(path).exists():
            parser.error(
                f"{what} {path} is missing; build it with python train.py fit --config configs/quickstart/{config}.yaml"
            )
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    fills = fill_scores(args)
    seconds_fills = time.perf_counter() - start
    fido = fido_scores(args, Path(args.work)) if args.fido_images > 0 else {}
    result = {
        "settings": {
            "images": args.images,
            "image_size": 64,
            "infiller": args.infiller,
            "infiller_config": json.loads((Path(args.infiller) / "config.json").read_text()),
            "classifier": args.classifier,
            "masks": {
                "blob": "random_blob_masks keep 10-90%, 2-8 cells",
                "grid": "random_grid_masks drop 10-90%, 2-16 cells",
            },
            "fido_images": args.fido_images,
            "fido_iterations": args.fido_iterations,
            "seed": args.seed,
            "data_seed": args.data_seed,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "fills": fills,
        "fido": fido,
        "seconds": {"fills": seconds_fills, "total": time.perf_counter() - start},
    }
    out = Path(args.out)
    write_atomic(out, json.dumps(result, indent=2))
    table = markdown(result)
    write_atomic(out.with_suffix(".md"), f"# In-fill quality\n\n`python benchmarks/infill_quality.py`\n\n{table}")
    print(table)
    return result


if __name__ == "__main__":
    main()
