"""Peak memory of ``evaluate.py`` against the size of the test split: the evaluation streams.

Runs ``evaluate.py`` (the Explainer; pointing game and segmentation) under ``/usr/bin/time -v`` on digit
scenes with 500 and with 4,000 test images and reports each run's peak resident set size and wall time,
and the ratio of the peak RSS of the largest split to that of the smallest. The classifier and the
Explainer are the quickstart's architectures (digitnet; a ``classifier_unet`` mask network of width 32)
with untrained weights, written into a temporary folder: memory does not depend on what the weights are.

Digit scenes keep every rendered scene in memory by default (``cache``, about 60 kB per 64 px scene with
its masks), a property of the embedded data module rather than of the evaluation; the real datasets
read their images from disk. Both settings are measured: ``cache=false`` isolates the evaluation engine,
``cache=true`` is what ``evaluate.py --data configs/data/digits.yaml`` does by default.

    python benchmarks/eval_memory.py [--sizes 500 4000] [--cache false true] [--workdir DIR]

Writes the table to ``benchmarks/results/eval_memory.json`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _shared import untrained_classifier_checkpoint

from explainer.evaluation.results import write_atomic
from explainer.export import export_explainer
from explainer.modules import ExplainerModule

REPO = Path(__file__).resolve().parent.parent

TIME = "/usr/bin/time"


def make_models(folder: Path) -> tuple[Path, Path]:
    """A digitnet classifier checkpoint and an Explainer export for it (untrained weights)."""
    ckpt = untrained_classifier_checkpoint(folder)
    explainer = ExplainerModule(
        str(ckpt), mask_net="classifier_unet", mask_net_kwargs={"backbone": "digitnet", "width": 32}
    )
    return ckpt, export_explainer(explainer, folder / "explainer")


def peak_rss(command: list[str]) -> dict[str, float]:
    """Runs ``command`` under ``/usr/bin/time -v``; returns its peak RSS (MB) and wall seconds."""
    run = subprocess.run(
        [TIME, "-v", *command], cwd=REPO, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"}
    )
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{run.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", run.stderr)
    if rss is None or wall is None:
        raise RuntimeError(f"no peak RSS in the output of {TIME} -v:\n{run.stderr[-2000:]}")
    hours, minutes, seconds = int(wall[1] or 0), int(wall[2]), float(wall[3])
    return {"peak_rss_mb": round(int(rss[1]) / 1024, 1), "wall_s": round(hours * 3600 + minutes * 60 + seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 4000], help="test-split sizes")
    parser.add_argument(
        "--cache",
        nargs="+",
        default=["false", "true"],
        choices=["false", "true"],
        help="digit-scene cache settings to measure",
    )
    parser.add_argument("--workdir", default=None, help="folder for the models and results (default: temporary)")
    args = parser.parse_args()
    if not Path(TIME).is_file():
        sys.exit(f"{TIME} is missing: install GNU time (apt install time) to measure peak RSS")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.workdir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        ckpt, export = make_models(work)
        rows = []
        for cache in args.cache:
            for size in args.sizes:
                command = [
                    sys.executable,
                    "evaluate.py",
                    "--data",
                    "configs/data/digits.yaml",
                    "--data-arg",
                    f"test_scenes={size}",
                    "--data-arg",
                    f"cache={cache}",
                    "--classifier",
                    str(ckpt),
                    "--methods",
                    f"explainer={export}",
                    "--metrics",
                    "pointing_game,segmentation",
                    "--out",
                    str(work / f"out-{cache}-{size}"),
                    "--trainer.enable_progress_bar",
                    "false",
                    "--trainer.logger",
                    "false",
                ]
                measured = peak_rss(command)
                rows.append({"test_images": size, "cache": cache == "true", **measured})
                print(
                    f"cache={cache:5s} {size:6d} images: peak RSS {measured['peak_rss_mb']:8.1f} MB, "
                    f"{measured['wall_s']:6.1f} s",
                    flush=True,
                )
    print()
    print("| cache | test images | peak RSS (MB) | wall (s) | RSS / smallest split |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        base = next(r for r in rows if r["cache"] == row["cache"] and r["test_images"] == min(args.sizes))
        row["rss_ratio"] = round(row["peak_rss_mb"] / base["peak_rss_mb"], 3)
        print(
            f"| {row['cache']} | {row['test_images']} | {row['peak_rss_mb']} | {row['wall_s']} | "
            f"{row['rss_ratio']:.3f} |"
        )
    result = {
        "benchmark": "eval_memory",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "command": "evaluate.py --methods explainer --metrics pointing_game,segmentation on configs/data/digits.yaml",
        "rows": rows,
    }
    out = REPO / "benchmarks" / "results" / "eval_memory.json"
    write_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
