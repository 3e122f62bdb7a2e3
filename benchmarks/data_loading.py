"""Data-loading throughput of the VOC 2007 and COCO 2014 data modules on generated trees.

Builds a VOC-format and a COCO-format tree of 500 generated JPEGs each (VOC-like 500x375, COCO-like 640x480,
1-4 objects per image; every 4th VOC image has a segmentation PNG), loads every split through the data
modules at 224 px with 2 worker processes and batch 32, and prints images per second. Three figures per
loader: ``steady`` times the batches after the first one (what a long epoch sees), ``cold`` includes starting
the workers and the first batch, and ``1-process`` is ``dataset[i]`` in the main process on one thread (the
cost per image of one core, without the loader). The table is also written to ``benchmarks/results/data_loading.json``.

    python -m benchmarks.data_loading [--images 500] [--workers 2] [--workdir DIR]

(run from the repository root as a module: the fake trees are built by the tests' dataset builders.)

The backgrounds are uniform noise, which JPEG compresses worse than photographs (about 115 kB per
500x375 image at quality 95), so decoding costs at least as much as with the real datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from explainer.data import COCO2014DataModule, VOC2007DataModule
from explainer.data.labels import COCO_CLASSES, VOC_CLASSES
from tests.data.fake_datasets import make_coco2014, make_voc2007, random_images

REPO = Path(__file__).resolve().parent.parent


def time_loader(loader) -> dict[str, float]:
    """Iterates a loader once; returns images, cold and steady images per second."""
    start = time.perf_counter()
    iterator = iter(loader)
    first = next(iterator)
    after_first = time.perf_counter()
    images, with_masks = len(first), int(first.mask_valid.sum()) if first.mask_valid is not None else 0
    for batch in iterator:
        images += len(batch)
        with_masks += int(batch.mask_valid.sum()) if batch.mask_valid is not None else 0
    end = time.perf_counter()
    rest = images - len(first)
    return {
        "images": images,
        "with_masks": with_masks,
        "cold_img_per_s": round(images / (end - start), 1),
        "steady_img_per_s": round(rest / (end - after_first), 1) if rest else float("nan"),
        "seconds": round(end - start, 2),
    }


def time_items(dataset, count: int = 100) -> float:
    """Single-process items per second of ``dataset[i]`` (decode + annotations + transform), one thread."""
    count = min(count, len(dataset))
    dataset[0]
    start = time.perf_counter()
    for i in range(count):
        dataset[i]
    return round(count / (time.perf_counter() - start), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="images per split")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the trees (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/data_loading.json")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the workers do the work; one thread each, as in training
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        n = args.images
        t0 = time.perf_counter()
        voc = random_images(n, 500, 375, len(VOC_CLASSES), seed=1, splits=("train",))
        voc += random_images(n, 500, 375, len(VOC_CLASSES), seed=2, prefix="9", splits=("test",), segmented_every=4)
        make_voc2007(work / "voc", voc)
        coco = {
            "train2014": random_images(n, 640, 480, len(COCO_CLASSES), seed=3),
            "val2014": random_images(n, 640, 480, len(COCO_CLASSES), seed=4),
        }
        for image_set, imgs in coco.items():
            for i, img in enumerate(imgs):
                img.id = str((1 if image_set == "train2014" else 500_000) + i)
        make_coco2014(work / "coco", coco)
        print(f"built {4 * n} images in {time.perf_counter() - t0:.1f} s under {work}")

        common = dict(
            image_size=args.image_size,
            batch_size=args.batch_size,
            num_workers=args.workers,
            pin_memory=torch.cuda.is_available(),
        )
        voc_dm = VOC2007DataModule(str(work / "voc"), **common)
        voc_dm.setup("fit")
        voc_dm.setup("test")
        coco_dm = COCO2014DataModule(str(work / "coco"), val_fraction=0.0, splits_dir=None, **common)
        coco_dm.setup("fit")
        coco_dm.setup("test")
        loaders = {
            "VOC2007 train (labels + boxes)": voc_dm.train_dataloader(),
            "VOC2007 test (+ masks on 1/4)": voc_dm.test_dataloader(),
            "COCO2014 train (labels + boxes)": coco_dm.train_dataloader(),
            "COCO2014 val (+ instance masks)": coco_dm.test_dataloader(),
        }
        rows = {name: time_loader(loader) for name, loader in loaders.items()}
        for name, loader in loaders.items():
            rows[name]["one_process_img_per_s"] = time_items(loader.dataset)

    header = (
        f"{'loader':34s} {'images':>6s} {'masks':>6s} {'cold img/s':>11s} {'steady img/s':>13s} "
        f"{'1-process img/s':>16s}"
    )
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        print(
            f"{name:34s} {r['images']:6d} {r['with_masks']:6d} {r['cold_img_per_s']:11.1f} "
            f"{r['steady_img_per_s']:13.1f} {r['one_process_img_per_s']:16.1f}"
        )
    result = {
        "settings": {
            "images_per_split": n,
            "workers": args.workers,
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "resize": "stretch",
            "voc_image": "500x375",
            "coco_image": "640x480",
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
