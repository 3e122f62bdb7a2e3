"""FastSHAP against its oracle: how close are one forward pass's values to converged KernelSHAP, and what does
KernelSHAP need to get as close?

On test digit scenes, KernelSHAP (captum's ``KernelShap``, Lundberg and Lee, 2017) explains the same value
function as a trained FastSHAP export: the players are the cells of the export's grid (a feature mask of the
cells), removed cells take the fill (0, the mean colour in normalised space: the baseline), and the value is
the surrogate's (or the classifier's) class probability. For every present class of every image:

* the oracle: KernelSHAP with ``--converged`` model evaluations (the largest budget's correlation with it, from
  another seed, checks that it has converged);
* FastSHAP's accuracy: the Pearson correlation of its cell values with the oracle's;
* KernelSHAP's accuracy at each budget of ``--budgets`` evaluations (another seed), with the same measure;
* RISE (``--rise-masks`` masks on the same value function, averaged over each cell), with the same measure.

The median over (image, class) pairs is reported; then the time per explanation of FastSHAP, KernelSHAP (at the
budget matching FastSHAP's accuracy and at the oracle's) and RISE, measured one after another in one process
on one device. KernelSHAP runs are spread over ``--workers`` processes.

Usage::

    python benchmarks/fastshap_vs_kernelshap.py --fastshap checkpoints/quickstart/fastshap
    python benchmarks/fastshap_vs_kernelshap.py --fast      # a smoke run (seconds; figures meaningless)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from explainer.atomic import write_atomic
from explainer.classifiers.source import load_classifier
from explainer.data.digits import DigitScenesDataModule
from explainer.export import load
from explainer.methods import build_method

RESULTS = Path(__file__).resolve().parent / "results"

_WORKER: dict[str, Any] = {}


def value_model_spec(config: dict[str, Any]) -> tuple[str, Any]:
    """``(name, classifier spec)`` of the value function a FastSHAP export was trained against."""
    settings = config.get("fastshap")
    if not isinstance(settings, dict):
        raise ValueError("the export is not a FastSHAP export (no 'fastshap' settings in its config.json)")
    if config.get("fill", "mean") != "mean":
        raise ValueError(f"this benchmark removes cells with the mean fill; the export used '{config['fill']}'")
    if settings["value_function"] == "surrogate":
        return "surrogate", settings["surrogate"]
    return "classifier", config["classifier"]["spec"]


class Probabilities(torch.nn.Module):
    """A frozen classifier's class probabilities (sigmoid or softmax, as it was trained)."""

    def __init__(self, frozen: torch.nn.Module) -> None:
        super().__init__()
        self.frozen = frozen
        self.softmax = frozen.activation == "softmax"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.frozen(images)
        return torch.softmax(logits, 1) if self.softmax else torch.sigmoid(logits)


def cell_feature_mask(grid: int, size: int) -> torch.Tensor:
    """``[1, 1, size, size]`` cell indices (row-major) of a ``grid x grid`` grid: captum's feature mask."""
    cell = size // grid
    ids = torch.arange(grid * grid).view(grid, grid)
    return ids.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[None, None]


def kernel_shap(
    model: torch.nn.Module, image: torch.Tensor, target: int, grid: int, samples: int, seed: int, batch: int
):
    """KernelSHAP cell values ``[grid * grid]`` of one image and class, through captum."""
    from captum.attr import KernelShap

    torch.manual_seed(seed)
    mask = cell_feature_mask(grid, image.shape[-1]).to(image.device)
    with torch.no_grad():
        attr = KernelShap(model).attribute(
            image[None],
            baselines=0.0,
            target=int(target),
            feature_mask=mask,
            n_samples=int(samples),
            perturbations_per_eval=min(int(batch), int(samples)),
        )
    cell = image.shape[-1] // grid
    return attr[0, 0, ::cell, ::cell].flatten().float().cpu()


def _init_worker(spec: Any, num_classes: int, device: str) -> None:
    torch.set_num_threads(1)
    _WORKER["model"] = Probabilities(load_classifier(spec, num_classes=num_classes)).to(device).eval()
    _WORKER["device"] = device


def _run_job(job: tuple[torch.Tensor, int, int, int, int, int]) -> torch.Tensor:
    image, target, grid, samples, seed, batch = job
    return kernel_shap(_WORKER["model"], image.to(_WORKER["device"]), target, grid, samples, seed, batch)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two vectors (0 when either is constant)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


def _timed(fn, repeats: int, device: str, warm_up: bool = True) -> float:
    """Seconds per call (after one warm-up call unless ``warm_up`` is false), synchronised on CUDA."""
    if warm_up:
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fastshap", default="checkpoints/quickstart/fastshap", help="a FastSHAP export folder")
    parser.add_argument("--images", type=int, default=16, help="test digit scenes explained")
    parser.add_argument("--converged", type=int, default=32768, help="KernelSHAP evaluations of the oracle")
    parser.add_argument("--budgets", default="64,256,1024,4096,16384", help="KernelSHAP evaluation budgets")
    parser.add_argument("--rise-masks", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=max(1, (mp.cpu_count() or 2) - 2))
    parser.add_argument("--batch", type=int, default=1024, help="perturbed images per forward pass")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--timing-images", type=int, default=2, help="images (pairs for KernelSHAP) timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="a smoke run: 2 images, small budgets")
    parser.add_argument("--out", default=str(RESULTS / "fastshap.json"))
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    if args.fast:
        args.images, args.converged, budgets, args.rise_masks, args.timing_images = 2, 256, [64, 128], 200, 1
    device = args.device
    console = Console()

    explainer = load(args.fastshap, map_location=device)
    config = explainer.config
    grid = int(config["fastshap"]["grid"])
    size = int((config.get("input_size") or [64])[0])
    value_name, spec = value_model_spec(config)
    num_classes = len(explainer.class_names)
    value_model = Probabilities(load_classifier(spec, num_classes=num_classes)).to(device).eval()

    dm = DigitScenesDataModule(
        image_size=size, train_scenes=1, val_scenes=1, test_scenes=4 * args.images, seed=args.seed, batch_size=64
    )
    dm.setup("test")
    images, labels = [], []
    for batch in dm.test_dataloader():
        for image, label in zip(batch.image, batch.labels, strict=True):
            if label.sum() > 0 and len(images) < args.images:
                images.append(image)
                labels.append(label)
    images_t = torch.stack(images).to(device)
    pairs = [(i, int(c)) for i, label in enumerate(labels) for c in label.nonzero().flatten().tolist()]
    console.print(f"{len(images)} scenes, {len(pairs)} (image, present class) pairs, {grid}x{grid} cells, {value_name}")

    # -- FastSHAP and RISE values --------------------------------------------------------------------------------
    cell = size // grid
    with torch.no_grad():
        fast = explainer.explain(images_t)[:, :, ::cell, ::cell].flatten(2).cpu()  # [N, C, d]
        probs = value_model(torch.cat([images_t, torch.zeros_like(images_t)])).cpu()
        activation = "softmax" if value_model.softmax else "sigmoid"  # RISE reads logits and applies it
        rise = build_method(
            "rise", value_model.frozen, num_masks=args.rise_masks, activation=activation, batch_size=args.batch
        )
        rise.to(device)
        rise_maps = torch.cat([rise.saliency(images_t[i : i + 1]) for i in range(len(images_t))])
        rise_cells = torch.nn.functional.avg_pool2d(rise_maps, cell).flatten(2).cpu()
    full, null = probs.chunk(2)
    gap = [float(fast[i, c].sum() - (full[i, c] - null[i, c])) for i, c in pairs]

    # -- KernelSHAP: the oracle, its convergence check and the budgets, spread over worker processes -------------
    jobs, keys = [], []
    for run, samples in [("converged", args.converged), *[(b, b) for b in budgets]]:
        for p, (i, c) in enumerate(pairs):
            seed = args.seed + 1000 * (1 + len(keys) // max(1, len(pairs))) + p
            jobs.append((images[i].cpu(), c, grid, samples, seed, args.batch))
            keys.append((run, p))
    start = time.perf_counter()
    context = mp.get_context("spawn")
    with context.Pool(args.workers, initializer=_init_worker, initargs=(spec, num_classes, device)) as pool:
        outputs = pool.map(_run_job, jobs, chunksize=1)
    ks_wall = time.perf_counter() - start
    runs: dict[Any, list[torch.Tensor]] = {}
    for (run, _), out in zip(keys, outputs, strict=True):
        runs.setdefault(run, []).append(out)
    oracle = runs["converged"]

    def median_corr(values: list[torch.Tensor]) -> float:
        return statistics.median(pearson(v, o) for v, o in zip(values, oracle, strict=True))

    fast_corrs = [pearson(fast[i, c], oracle[p]) for p, (i, c) in enumerate(pairs)]
    fast_median = statistics.median(fast_corrs)
    rise_median = median_corr([rise_cells[i, c] for i, c in pairs])
    budget_medians = {b: median_corr(runs[b]) for b in budgets}
    matching = next((b for b in budgets if budget_medians[b] >= fast_median), None)

    # -- time per explanation, one method after another on the same device --------------------------------------
    n_time = min(args.timing_images, len(pairs))
    single = [images_t[i : i + 1] for i in range(len(images_t))]
    fast_s = _timed(lambda: [explainer.explain(x) for x in single], 3, device) / len(single)
    rise_s = _timed(lambda: [rise.saliency(x) for x in single[:n_time]], 1, device) / n_time
    timed_ks: dict[int, float] = {}
    for samples in sorted({*([matching] if matching else []), args.converged}):  # once each: KernelSHAP is slow
        timed_ks[samples] = (
            _timed(
                lambda s=samples: [
                    kernel_shap(value_model, images_t[i], c, grid, s, args.seed, args.batch) for i, c in pairs[:n_time]
                ],
                1,
                device,
                warm_up=samples <= 1024,  # KernelSHAP has no first-call cost worth a second run
            )
            / n_time
        )

    result = {
        "benchmark": "fastshap_vs_kernelshap",
        "settings": {
            "fastshap": str(args.fastshap),
            "value_function": value_name,
            "value_model": spec if isinstance(spec, str) else json.dumps(spec),
            "grid": grid,
            "players": grid * grid,
            "image_size": size,
            "images": len(images),
            "pairs": len(pairs),
            "converged_evaluations": args.converged,
            "budgets": budgets,
            "rise_masks": args.rise_masks,
            "seed": args.seed,
            "device": device,
            "fast": bool(args.fast),
        },
        "accuracy": {
            "fastshap_median_pearson": fast_median,
            "fastshap_pearson_quartiles": statistics.quantiles(fast_corrs, n=4) if len(fast_corrs) > 1 else fast_corrs,
            "fastshap_mean_abs_efficiency_gap": statistics.mean(abs(g) for g in gap),
            "rise_median_pearson": rise_median,
            "kernelshap_largest_budget_vs_converged_median_pearson": budget_medians[max(budgets)],
            "kernelshap_median_pearson_by_budget": {str(b): v for b, v in budget_medians.items()},
            "kernelshap_evaluations_matching_fastshap": matching,
        },
        "seconds_per_explanation": {
            "fastshap_all_classes": fast_s,
            "rise_all_classes": rise_s,
            **{f"kernelshap_{s}_one_class": t for s, t in timed_ks.items()},
        },
        "kernelshap_worker_wall_seconds": ks_wall,
        "machine": {
            "platform": platform.platform(),
            "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
            "threads": torch.get_num_threads(),
            "workers": args.workers,
        },
    }
    table = Table(title=f"FastSHAP vs KernelSHAP ({len(pairs)} image-class pairs, {grid * grid} cells, {device})")
    for col in ("method", "median Pearson r vs oracle", "s / explanation", "x FastSHAP time"):
        table.add_column(col)
    table.add_row("FastSHAP (1 pass, all classes)", f"{fast_median:.3f}", f"{fast_s:.5f}", "1")
    for b in budgets:
        t = timed_ks.get(b)
        table.add_row(
            f"KernelSHAP {b} evals (1 class)",
            f"{budget_medians[b]:.3f}",
            f"{t:.3f}" if t else "",
            f"{t / fast_s:.0f}" if t else "",
        )
    t = timed_ks[args.converged]
    table.add_row(f"KernelSHAP {args.converged} (oracle)", "1", f"{t:.3f}", f"{t / fast_s:.0f}")
    table.add_row(
        f"RISE {args.rise_masks} masks (all classes)", f"{rise_median:.3f}", f"{rise_s:.4f}", f"{rise_s / fast_s:.0f}"
    )
    console.print(table)
    console.print(
        f"KernelSHAP {max(budgets)} evaluations vs the oracle: r = {budget_medians[max(budgets)]:.4f}; "
        f"evaluations to match FastSHAP: {matching}"
    )
    out = Path(args.out)
    write_atomic(out, json.dumps(result, indent=2))
    write_atomic(out.with_suffix(".md"), markdown(result))
    console.print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown page (the table and the settings)."""
    s, acc, sec = result["settings"], result["accuracy"], result["seconds_per_explanation"]
    fast_s = sec["fastshap_all_classes"]
    lines = [
        "# FastSHAP vs KernelSHAP (and RISE)",
        "",
        f"{s['pairs']} (image, present class) pairs of {s['images']} test digit scenes ({s['image_size']} px), "
        f"{s['players']} players ({s['grid']}x{s['grid']} cells), value function: the {s['value_function']}'s class "
        f"probability, removed cells at the mean colour. Oracle: captum KernelSHAP with {s['converged_evaluations']} "
        f"evaluations (a run with {max(s['budgets'])}, another seed, correlates with it at r = "
        f"{acc['kernelshap_largest_budget_vs_converged_median_pearson']:.4f}). Accuracy: median over pairs of the "
        "Pearson correlation of the cell values with the oracle's. Times on "
        f"{result['machine']['device']} ({s['device']}), one method after another in one process.",
        "",
        "| method | median Pearson r | s / explanation | x FastSHAP |",
        "|---|---|---|---|",
        f"| FastSHAP, one pass (all classes) | {acc['fastshap_median_pearson']:.3f} | {fast_s:.5f} | 1 |",
    ]
    for b, r in acc["kernelshap_median_pearson_by_budget"].items():
        t = sec.get(f"kernelshap_{b}_one_class")
        lines.append(
            f"| KernelSHAP, {b} evaluations (one class) | {r:.3f} | {f'{t:.3f}' if t else '-'} | "
            f"{f'{t / fast_s:.0f}' if t else '-'} |"
        )
    t = sec[f"kernelshap_{s['converged_evaluations']}_one_class"]
    lines.append(
        f"| KernelSHAP, {s['converged_evaluations']} evaluations (oracle, one class) | 1 | {t:.3f} | {t / fast_s:.0f} |"
    )
    rise_s = sec["rise_all_classes"]
    lines.append(
        f"| RISE, {s['rise_masks']} masks (all classes) | {acc['rise_median_pearson']:.3f} | {rise_s:.4f} | "
        f"{rise_s / fast_s:.0f} |"
    )
    lines += [
        "",
        f"KernelSHAP needs {acc['kernelshap_evaluations_matching_fastshap'] or 'more than the largest budget of'} "
        "model evaluations per class to be as close to the oracle as FastSHAP. FastSHAP's quartiles of r: "
        f"{', '.join(f'{q:.3f}' for q in acc['fastshap_pearson_quartiles'])}; mean |sum of values - (v(1) - v(0))| "
        f"of the exported network (no normalisation at inference): {acc['fastshap_mean_abs_efficiency_gap']:.4f}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
