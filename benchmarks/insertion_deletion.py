"""Benchmark: batched insertion / deletion against one-step-at-a-time loops.

Runs the digit-scenes classifier (``build_classifier("digitnet", 10)``, random weights) on random images
and maps and times three ways of computing the same deletion and insertion AUCs:

* ``naive``: one image and one step per forward pass (RISE's ``single_run``);
* ``per_step``: one forward pass per step over all images (RISE's batched ``evaluate``);
* ``batched``: :class:`explainer.metrics.InsertionDeletion`, all steps of all images in chunks;

against its floor: the same number of classifier forwards on ready-made images, timed alone, in one large
batch and in the metric's chunks (the better of the two is the floor; ``batched / floor`` is the overhead of
ranking pixels and building the perturbed images).

Usage (from the repository root)::

    python benchmarks/insertion_deletion.py --images 16 --size 64 --step 64
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from explainer.atomic import write_atomic
from explainer.classifiers import build_classifier
from explainer.metrics import InsertionDeletion, rise_blur, top_classes, trapezoid_auc

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def naive(classifier, images, maps, classes, step):
    """One image, one step, one forward pass at a time."""
    height, width = images.shape[-2:]
    pixels = height * width
    steps = math.ceil(pixels / step)
    blurred = rise_blur(images)
    aucs = {"deletion": [], "insertion": []}
    for b in range(images.shape[0]):
        order = maps[b, 0].flatten().argsort(descending=True, stable=True)
        cls = int(classes[b, 0])
        for mode in aucs:
            scores = []
            for i in range(steps + 1):
                top = order[: min(i * step, pixels)]
                if mode == "deletion":
                    img = images[b].clone().view(3, -1)
                    img[:, top] = 0.0
                else:
                    img = blurred[b].clone().view(3, -1)
                    img[:, top] = images[b].reshape(3, -1)[:, top]
                scores.append(torch.sigmoid(classifier(img.view(1, 3, height, width)))[0, cls])
            aucs[mode].append(trapezoid_auc(torch.stack(scores)))
    return {mode: torch.stack(values).mean().item() for mode, values in aucs.items()}


@torch.no_grad()
def per_step(classifier, images, maps, classes, step):
    """One forward pass per step, over all images at once."""
    n, _, height, width = images.shape
    pixels = height * width
    steps = math.ceil(pixels / step)
    blurred = rise_blur(images)
    order = maps[:, 0].flatten(1).argsort(dim=1, descending=True, stable=True)
    rows = torch.arange(n, device=images.device).unsqueeze(1)
    aucs = {}
    for mode in ("deletion", "insertion"):
        scores = []
        for i in range(steps + 1):
            top = order[:, : min(i * step, pixels)]
            if mode == "deletion":
                img = images.clone().view(n, 3, -1)
                img.permute(0, 2, 1)[rows, top] = 0.0
            else:
                img = blurred.clone().view(n, 3, -1)
                img.permute(0, 2, 1)[rows, top] = images.view(n, 3, -1).permute(0, 2, 1)[rows, top]
            probs = torch.sigmoid(classifier(img.view(n, 3, height, width)))
            scores.append(probs.gather(1, classes)[:, 0])
        aucs[mode] = trapezoid_auc(torch.stack(scores, dim=1)).mean().item()
    return aucs


def batched(classifier, images, maps, classes, step, chunk_size):
    metric = InsertionDeletion(classifier, step=step, chunk_size=chunk_size).to(images.device)
    metric.update(images, maps, classes)
    out = metric.compute()
    return {mode: out[mode].item() for mode in ("deletion", "insertion")}


@torch.no_grad()
def floor(classifier, images, total, chunk_size):
    """``total`` classifier forwards on ready-made images, in passes of at most ``chunk_size``."""
    ready = images[torch.arange(min(total, chunk_size), device=images.device) % len(images)].contiguous()
    done = 0
    while done < total:
        n = min(chunk_size, total - done)
        classifier(ready[:n])
        done += n


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def timed(fn, device, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--step", type=int, default=64, help="pixels per step")
    parser.add_argument("--chunk-size", type=int, default=64, help="images per forward pass (the metric default)")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "insertion_deletion.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    classifier = build_classifier("digitnet", 10).to(device)
    images = torch.randn(args.images, 3, args.size, args.size, device=device)
    # random weights, but BatchNorm statistics taken from the images, so that the outputs depend on the
    # input (with the initial statistics every image gets nearly the same scores)
    for module in classifier.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        classifier.train()(images)
    classifier.eval()
    maps = torch.rand(args.images, 1, args.size, args.size, device=device)
    classes = top_classes(classifier, images)
    steps = math.ceil(args.size * args.size / args.step)
    with torch.no_grad():  # warm-up
        classifier(images[:1])
        classifier(images)

    rows = []
    results = {}
    for name, fn in (
        ("naive", lambda: naive(classifier, images, maps, classes, args.step)),
        ("per_step", lambda: per_step(classifier, images, maps, classes, args.step)),
        ("batched", lambda: batched(classifier, images, maps, classes, args.step, args.chunk_size)),
    ):
        seconds, aucs = timed(fn, device, args.repeats)
        results[name] = aucs
        passes = {
            "naive": 2 * args.images * (steps + 1),
            "per_step": 2 * (steps + 1),
            "batched": 2 * math.ceil(args.images * (steps + 1) / args.chunk_size),
        }[name]
        rows.append(
            {
                "method": name,
                "seconds": seconds,
                "forward_passes": passes,
                "images_per_second": 2 * args.images * (steps + 1) / seconds,
                **aucs,
            }
        )
    perturbed = 2 * args.images * (steps + 1)
    floors = {
        "floor_one_batch": timed(lambda: floor(classifier, images, perturbed, perturbed), device, args.repeats)[0],
        "floor_chunks": timed(lambda: floor(classifier, images, perturbed, args.chunk_size), device, args.repeats)[0],
    }
    for name, seconds in floors.items():
        rows.append(
            {
                "method": name,
                "seconds": seconds,
                "forward_passes": 1 if name == "floor_one_batch" else math.ceil(perturbed / args.chunk_size),
                "images_per_second": perturbed / seconds,
                "deletion": None,
                "insertion": None,
            }
        )
    naive_s = rows[0]["seconds"]
    for row in rows:
        row["speedup_vs_naive"] = naive_s / row["seconds"]
    floor_s = min(floors.values())
    batched_s = next(r["seconds"] for r in rows if r["method"] == "batched")
    max_diff = max(abs(results["batched"][m] - results["naive"][m]) for m in ("deletion", "insertion"))

    print(
        f"insertion/deletion, digitnet, {args.images} images of {args.size} px, step {args.step} px "
        f"({steps} steps, {2 * args.images * (steps + 1)} perturbed images), device {device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'method':<16}{'passes':>8}{'seconds':>10}{'img/s':>10}{'speed-up':>10}{'deletion':>10}{'insertion':>11}")
    for row in rows:
        print(
            f"{row['method']:<16}{row['forward_passes']:>8}{row['seconds']:>10.3f}{row['images_per_second']:>10.0f}"
            f"{row['speedup_vs_naive']:>9.1f}x{_auc(row['deletion']):>10s}{_auc(row['insertion']):>11s}"
        )
    print(f"max |AUC batched - AUC naive| = {max_diff:.2e}")
    print(f"batched / floor = {batched_s / floor_s:.3f} (target <= 1.15)")

    report = {
        "config": {
            **vars(args),
            "steps": steps,
            "classifier": "digitnet (random weights, BatchNorm statistics of the images)",
        },
        "environment": {
            "torch": torch.__version__,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "results": rows,
        "max_auc_difference": max_diff,
        "batched_over_floor": batched_s / floor_s,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
