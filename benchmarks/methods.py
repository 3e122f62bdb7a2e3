"""Per-image wall time of every attribution method on the digit-scenes classifier.

The classifier is ``build_classifier("digitnet", 10)`` with random weights (seed 0) wrapped in a
``FrozenClassifier``; the images are the first ``--batch`` test scenes of digit scenes at 64 px, and each
method explains the present classes of each image (``--classes present``, 1-3 per scene) or all 10
(``--classes all``) in one ``attribute`` call per batch. Methods run with their default settings (RISE:
N = 4000 masks; FIDO / BBMP: 300 iterations; extremal perturbations: 800 iterations x 4 areas).

Iterative methods can be capped with ``--max-iterations``: they then run that many iterations and the
full-schedule time is extrapolated linearly from the measured time per iteration (marked
``extrapolated`` in the table and the JSON).

Usage::

    python benchmarks/methods.py                      # all methods, writes benchmarks/results/methods.json
    python benchmarks/methods.py --methods rise gradcam --classes all
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from explainer.classifiers import FrozenClassifier, build_classifier
from explainer.data.batch import collate
from explainer.data.digits import DigitScenes
from explainer.methods import available_methods, build_method, present_classes

DEFAULT_METHODS = [
    "explainer",
    "centre",
    "uniform",
    "gradient",
    "input_x_gradient",
    "guided_backprop",
    "integrated_gradients",
    "gradcam",
    "gradcam++",
    "rise",
    "fido",
    "bbmp",
    "extremal",
]
ITERATIVE = {"fido": 300, "bbmp": 300, "extremal": 800}  # default schedules


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_method(
    name: str,
    classifier: torch.nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    max_iterations: int | None,
    repeats: int,
) -> dict:
    """Times one method; returns its row of the results."""
    options: dict = {}
    full = ITERATIVE.get(name)
    capped = full is not None and max_iterations is not None and max_iterations < full
    if name == "rise":
        options["num_masks"] = 4000
    if capped:
        options["iterations"] = max_iterations
    if name == "explainer":  # the quickstart's mask network (random weights: the speed does not depend on them)
        from explainer.nets import build_mask_net

        options["model"] = build_mask_net("unet", 10, width=16, depth=3, stem_stride=2)
    method = build_method(name, classifier, **options).to(images.device)
    # warm-up on the same batch with a short schedule (allocations, kernel selection, lazy imports)
    warm = dict(options)
    if full is not None:
        warm["iterations"] = 1
    if name == "rise":
        warm["num_masks"] = 16
    (method if name == "explainer" else build_method(name, classifier, **warm).to(images.device))(images, classes)
    if name == "rise":  # the mask bank is drawn once per image size and reused: not part of the timing
        method.mask_bank(*images.shape[-2:], images.device)
    times: list[float] = []
    for _ in range(repeats):
        if times and times[0] > 10.0:  # slow methods are timed once
            break
        _sync(images.device)
        start = time.perf_counter()
        maps = method(images, classes)
        _sync(images.device)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    assert maps.shape == (*classes.shape, *images.shape[-2:])
    options = {k: (v if k != "model" else "unet(width=16, depth=3, stem_stride=2)") for k, v in options.items()}
    row = {
        "method": name,
        "batch_seconds": seconds,
        "per_image_seconds": seconds / images.shape[0],
        "extrapolated": False,
        "options": options,
    }
    if capped:
        row["measured_iterations"] = max_iterations
        row["iterations"] = full
        row["per_image_seconds"] = seconds / max_iterations * full / images.shape[0]
        row["batch_seconds"] = seconds / max_iterations * full
        row["extrapolated"] = True
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS,
        choices=available_methods(),
        metavar="NAME",
        help="methods to time (default: all baselines)",
    )
    parser.add_argument("--batch", type=int, default=8, help="images per attribute() call")
    parser.add_argument(
        "--classes",
        choices=["present", "all"],
        default="present",
        help="explain the present classes of each image or all 10",
    )
    parser.add_argument(
        "--max-iterations",
        type=int,
        default=None,
        help="cap FIDO / BBMP / extremal iterations and extrapolate to the full schedule",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per method, the minimum is kept (methods over 10 s run once)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "methods.json")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    classifier = FrozenClassifier(build_classifier("digitnet", 10), reference="digitnet (random weights, seed 0)")
    classifier.to(device)
    batch = collate([DigitScenes("test", num_scenes=args.batch, image_size=64)[i] for i in range(args.batch)])
    images = batch.image.to(device)
    if args.classes == "present":
        classes = present_classes(batch.labels).to(device)
    else:
        classes = torch.arange(10, device=device).expand(args.batch, 10).contiguous()
    pairs = int((classes >= 0).sum())

    rows = []
    print(
        f"digitnet (random weights), 64 px, batch {args.batch}, classes: {args.classes} "
        f"({pairs} image-class pairs), device {device}, {torch.get_num_threads()} CPU threads"
    )
    print(f"{'method':<22}{'s / image':>12}{'s / batch':>12}  note")
    for name in args.methods:
        row = time_method(name, classifier, images, classes, args.max_iterations, args.repeats)
        rows.append(row)
        note = (
            f"extrapolated from {row['measured_iterations']} of {row['iterations']} iterations"
            if row["extrapolated"]
            else ""
        )
        print(f"{name:<22}{row['per_image_seconds']:>12.4f}{row['batch_seconds']:>12.3f}  {note}", flush=True)

    by_name = {r["method"]: r["per_image_seconds"] for r in rows}
    ratios = {}
    if "explainer" in by_name and "rise" in by_name:
        ratios["rise_over_explainer"] = by_name["rise"] / by_name["explainer"]
        print(f"RISE (N=4000) / Explainer time per image: {ratios['rise_over_explainer']:.0f}x (target >= 1000x)")
    result = {
        "ratios": ratios,
        "setup": {
            "classifier": "digitnet, 10 classes, random weights (seed 0)",
            "image_size": 64,
            "batch": args.batch,
            "classes": args.classes,
            "pairs": pairs,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "processor": platform.processor(),
        },
        "methods": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
