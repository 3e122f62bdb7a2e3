"""Data-loading throughput of the VOC 2007 and COCO 2014 data modules, per image decoder and per worker.

Builds a VOC-format tree of realistic JPEGs (500x375, quality 90: crops of bundled photographs with a patch
per object; about 45 kB per file, half of VOC 2007's average of about 85 kB, so decoding costs somewhat less
than on VOC) and a COCO-format tree (640x480, noise backgrounds), then for each image decoder (``pil``,
``torchvision``) measures at 224 px:

* ``decode``: the decoder alone, images per second on one core;
* ``1 worker``: ``dataset[i]`` in one process on one thread (decode + annotations + resize + normalise): what
  one loader worker delivers, so the workers a GPU needs are its images/s divided by this;
* ``loader``: the data module's training loader with ``--workers`` persistent worker processes (pinned memory
  when CUDA is present), steady images/s after the first batch, and ``cold`` with the workers' start.

When ``benchmarks/results/gpu.json`` holds a measured training throughput, the table ends with the workers
needed to feed it. Results go to ``benchmarks/results/data_loading.json`` (atomic write).

    python -m benchmarks.data_loading [--images 300] [--workers 2] [--decoders pil torchvision]

(run from the repository root as a module: the trees are built by the tests' dataset builders.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from explainer.atomic import write_atomic
from explainer.data import COCO2014DataModule, VOC2007DataModule
from explainer.data.files import DECODERS, read_image
from explainer.data.labels import COCO_CLASSES, VOC_CLASSES
from tests.data.fake_datasets import make_coco2014, make_voc2007, random_images

REPO = Path(__file__).resolve().parent.parent


def time_loader(loader) -> dict[str, float]:
    """Iterates a loader once; returns images, cold and steady images per second."""
    start = time.perf_counter()
    iterator = iter(loader)
    first = next(iterator)
    after_first = time.perf_counter()
    images = len(first)
    for batch in iterator:
        images += len(batch)
    end = time.perf_counter()
    rest = images - len(first)
    return {
        "images": images,
        "cold_img_per_s": round(images / (end - start), 1),
        "steady_img_per_s": round(rest / (end - after_first), 1) if rest else float("nan"),
    }


def time_items(dataset, count: int) -> float:
    """Single-process items per second of ``dataset[i]`` (decode + annotations + transform), one thread."""
    count = min(count, len(dataset))
    dataset[0]
    start = time.perf_counter()
    for i in range(count):
        dataset[i]
    return round(count / (time.perf_counter() - start), 1)


def time_decode(paths: list[Path], decoder: str) -> float:
    """Images per second of the decoder alone on one core."""
    read_image(paths[0], decoder)
    start = time.perf_counter()
    for path in paths:
        read_image(path, decoder)
    return round(len(paths) / (time.perf_counter() - start), 1)


def build_trees(work: Path, n: int) -> dict[str, Path]:
    """A photographic VOC tree (train + test) and a COCO tree (train), ``n`` images per split."""
    voc = random_images(n, 500, 375, len(VOC_CLASSES), seed=1, splits=("train",))
    voc += random_images(n, 500, 375, len(VOC_CLASSES), seed=2, prefix="9", splits=("test",), segmented_every=4)
    make_voc2007(work / "voc", voc, quality=90, photographs=True)
    coco = {  # a few val2014 images: the module checks the whole layout
        "train2014": random_images(n, 640, 480, len(COCO_CLASSES), seed=3),
        "val2014": random_images(4, 640, 480, len(COCO_CLASSES), seed=4),
    }
    for image_set, imgs in coco.items():
        for i, img in enumerate(imgs):
            img.id = str((1 if image_set == "train2014" else 500_000) + i)
    make_coco2014(work / "coco", coco)
    return {"voc": work / "voc", "coco": work / "coco"}


def measure(
    work: Path, images: int, workers: int, decoders: list[str], batch_size: int = 32, image_size: int = 224
) -> dict[str, Any]:
    """Builds the trees under ``work`` and times every loader with every decoder; returns the report."""
    t0 = time.perf_counter()
    roots = build_trees(work, images)
    jpegs = sorted((roots["voc"] / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))
    sizes = [p.stat().st_size for p in jpegs]
    print(f"built {3 * images} images in {time.perf_counter() - t0:.1f} s under {work}")
    rows: dict[str, dict[str, Any]] = {}
    for decoder in decoders:
        common = dict(
            image_size=image_size,
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            decoder=decoder,
        )
        voc = VOC2007DataModule(str(roots["voc"]), **common)
        coco = COCO2014DataModule(str(roots["coco"]), val_fraction=0.0, splits_dir=None, **common)
        voc.setup("fit")
        voc.setup("test")
        coco.setup("fit")
        loaders = {
            "VOC2007 train (labels + boxes)": (voc.train_dataloader(), jpegs[:images]),
            "VOC2007 test (+ masks on 1/4)": (voc.test_dataloader(), jpegs[images:]),
            "COCO2014 train (labels + boxes)": (coco.train_dataloader(), None),
        }
        for name, (loader, paths) in loaders.items():
            torch.set_num_threads(1)  # a worker's view: one thread
            row: dict[str, Any] = {"decoder": decoder, "loader": name}
            row["decode_img_per_s"] = time_decode(paths, decoder) if paths else None
            row["one_worker_img_per_s"] = time_items(loader.dataset, min(images, 150))
            row.update(time_loader(loader))
            rows[f"{name} [{decoder}]"] = row
            print(
                f"{name} [{decoder}]: decode {row['decode_img_per_s']}, 1 worker {row['one_worker_img_per_s']}, "
                f"{workers} workers {row['steady_img_per_s']} img/s"
            )
    return {
        "settings": {
            "images_per_split": images,
            "workers": workers,
            "batch_size": batch_size,
            "image_size": image_size,
            "resize": "stretch",
            "voc_image": "500x375 JPEG quality 90, photograph crops",
            "voc_mean_file_kb": round(sum(sizes) / len(sizes) / 1024, 1),
            "coco_image": "640x480 JPEG quality 95, noise",
            "persistent_workers": workers > 0,
            "pin_memory": torch.cuda.is_available(),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "results": rows,
    }


def gpu_demand(path: Path) -> float | None:
    """The best measured training throughput (images/s) of ``gpu.json``, when it holds a real GPU run."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    if report.get("dry_run", True):
        return None
    rates = [row.get("images_per_second") or 0.0 for row in report.get("training", {}).get("rows", [])]
    return max(rates, default=0.0) or None


def print_table(report: dict[str, Any], demand: float | None) -> None:
    workers = report["settings"]["workers"]
    header = f"{'loader':42s} {'decode/s':>9s} {'1 worker/s':>11s} {f'{workers} workers/s':>13s} {'cold/s':>8s}"
    print(header)
    print("-" * len(header))
    for name, r in report["results"].items():
        decode = f"{r['decode_img_per_s']:.1f}" if r["decode_img_per_s"] else "-"
        print(
            f"{name:42s} {decode:>9s} {r['one_worker_img_per_s']:11.1f} {r['steady_img_per_s']:13.1f} "
            f"{r['cold_img_per_s']:8.1f}"
        )
    if demand:
        print(f"\nworkers needed to feed the GPU's {demand:.0f} training images/s (gpu.json):")
        for name, r in report["results"].items():
            print(f"  {name:42s} {math.ceil(demand / r['one_worker_img_per_s']):4d}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images per split")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=DECODERS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the trees (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/data_loading.json")
    parser.add_argument("--gpu-json", type=Path, default=REPO / "benchmarks/results/gpu.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        report = measure(work, args.images, args.workers, args.decoders, args.batch_size, args.image_size)
    demand = gpu_demand(args.gpu_json)
    if demand:
        report["gpu_training_img_per_s"] = demand
        report["workers_needed"] = {
            name: math.ceil(demand / r["one_worker_img_per_s"]) for name, r in report["results"].items()
        }
    print_table(report, demand)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()
