"""The GPU check: the tests marked ``gpu``, then the paper-scale throughput figures, side by side, in a few minutes.

Sections (each written to the JSON as soon as it is measured, so a run stopped early keeps what it has):

* ``tests``: ``pytest -m gpu tests/test_gpu.py`` (CUDA training steps in bf16, ``explain()`` on CUDA, DDP over
  NCCL when there are two GPUs), its summary line and exit status;
* ``training``: the Explainer's training step (``explain_batch`` + backward + Adam, in a plain loop) with the
  ``resnet50_voc`` preset's networks, random weights (no downloads) and synthetic batches at 224 px: float32 at
  the paper's batch 16, against bf16 autocast (fp16 where the GPU has no bf16) with channels-last weights and
  images at the largest batch that fits (found by doubling until CUDA runs out of memory), and the same
  compiled (``torch.compile`` of both networks through :class:`explainer.callbacks.Accelerate`);
* ``explain``: ``explainer.load(folder).explain(images)`` in float32 and in bf16, against the mask network's
  bare forward;
* ``rise``: RISE with N=4000 masks on the same classifier, per image;
* ``data_loading``: ``benchmarks/data_loading.py`` on this machine's cores (a VOC tree of 500x375 JPEGs at
  quality 90, both image decoders, one worker per core up to 16): the loader's images/s beside the training's,
  and the workers one training run needs (into ``data_loading.json`` next to ``gpu.json``);
* ``insertion_deletion``: the batched metric (:class:`explainer.metrics.InsertionDeletion`) against the loop
  of one forward pass per step (``per_step`` of ``benchmarks/insertion_deletion.py``), same AUCs.

``--dry-run`` runs the same code on the CPU with tiny sizes (64 px, a small U-Net mask network, digitnet, a few
steps, 100 RISE masks as bf16 convolutions are slow on most CPUs, ``compile`` with the ``eager`` backend) in
about a minute, into ``benchmarks/results/gpu_dry_run/``, so that the real figures are never overwritten by a dry run.

Usage (``benchmarks/gpu_check.sh`` runs it with a time limit)::

    python benchmarks/gpu_check.py              # benchmarks/results/gpu.json and gpu.md
    python benchmarks/gpu_check.py --dry-run    # benchmarks/results/gpu_dry_run/gpu.json and gpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from insertion_deletion import batched as insertion_deletion_batched
from insertion_deletion import per_step as insertion_deletion_per_step
from rich.console import Console
from rich.table import Table

import explainer
from explainer.atomic import write_atomic
from explainer.callbacks import Accelerate
from explainer.classifiers import build_classifier
from explainer.data.batch import Batch
from explainer.export import export_explainer
from explainer.methods import build_method
from explainer.metrics.causal import num_steps
from explainer.modules import ExplainerModule
from explainer.precision import AUTOCAST_DTYPES, resolve_precision

REPO = Path(__file__).resolve().parent.parent
PRESET = REPO / "configs" / "experiment" / "resnet50_voc.yaml"
NUM_CLASSES = 20
SECTIONS = ("training", "explain", "rise", "insertion_deletion", "data_loading")
console = Console()

SIZES = {  # the real check, and the dry run's tiny stand-in
    "gpu": {
        "image_size": 224,
        "baseline_batch": 16,
        "max_batch": 512,
        "warmup": 3,
        "steps": 10,
        "explain_batch": 64,
        "rise_masks": 4000,
        "rise_warmup": 1,
        "rise_images": 2,
        "rise_batch": 500,
        "insdel_images": 8,
        "insdel_step": 224,
        "insdel_chunk": 256,
        "compile_backend": None,
        "loader_images": 200,
    },
    "dry_run": {
        "image_size": 64,
        "baseline_batch": 2,
        "max_batch": 8,
        "warmup": 1,
        "steps": 2,
        "explain_batch": 4,
        "rise_masks": 100,
        "rise_warmup": 0,
        "rise_images": 1,
        "rise_batch": 100,
        "insdel_images": 2,
        "insdel_step": 256,
        "insdel_chunk": 64,
        "compile_backend": "eager",
        "loader_images": 80,  # 3 batches of 32: the steady rate needs more than one
    },
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` (the device synchronised around each call) after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def autocast(device: torch.device, precision: str) -> Any:
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def build_module(dry_run: bool, device: torch.device) -> ExplainerModule:
    """The ``resnet50_voc`` preset's Explainer on random weights: a DeepLabV3-ResNet-50 mask network and a
    ResNet-50 classifier (``--dry-run``: a width-8 U-Net and digitnet), with the preset's loss weights."""
    args = dict(yaml.safe_load(PRESET.read_text())["model"]["init_args"])
    args.pop("classifier")
    args["mask_net_kwargs"] = {k: v for k, v in args.get("mask_net_kwargs", {}).items() if k != "weights_backbone"}
    if dry_run:
        args.update(mask_net="unet", mask_net_kwargs={"width": 8, "depth": 2})
    torch.manual_seed(0)
    classifier = build_classifier("digitnet" if dry_run else "resnet50", NUM_CLASSES)
    module = ExplainerModule(classifier=classifier, num_classes=NUM_CLASSES, **args)
    return module.to(device).train()


def synthetic_batch(batch_size: int, size: int, device: torch.device, channels_last: bool = False) -> Batch:
    """Normalised random images and multi-hot labels with at least one class per image."""
    gen = torch.Generator().manual_seed(batch_size)
    images = torch.randn(batch_size, 3, size, size, generator=gen)
    labels = (torch.rand(batch_size, NUM_CLASSES, generator=gen) < 0.1).float()
    labels[torch.arange(batch_size), torch.randint(0, NUM_CLASSES, (batch_size,), generator=gen)] = 1.0
    images = images.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return Batch(image=images, labels=labels.to(device))


class TrainStep:
    """One training step of the Explainer as Lightning runs it under a precision: the loss under autocast,
    backward (through a gradient scaler for fp16), an Adam step."""

    def __init__(self, module: ExplainerModule, precision: str) -> None:
        self.module = module
        self.precision = precision
        self.optimizer = module.configure_optimizers()
        enabled = precision == "16-mixed"
        self.scaler = torch.amp.GradScaler(module.device.type, enabled=enabled)
        self.loss = float("nan")

    def __call__(self, batch: Batch) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.module.device, self.precision):
            loss = self.module.explain_batch(batch)["loss"]
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss = loss.detach()


def out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err)


def largest_batch(step: TrainStep, start: int, limit: int, size: int, channels_last: bool) -> tuple[int, list]:
    """The largest batch, doubling from ``start`` up to ``limit``, whose training step runs (OOM caught)."""
    device = step.module.device
    tried, best = [], None
    batch_size = start
    while batch_size <= limit:
        reset_memory(device)
        fits = True
        try:
            step(synthetic_batch(batch_size, size, device, channels_last))
            synchronize(device)
        except RuntimeError as err:
            if not out_of_memory(err):
                raise
            fits = False
        if not fits:  # (outside the except block, whose traceback holds the step's tensors)
            tried.append({"batch_size": batch_size, "fits": False})
            step.optimizer.zero_grad(set_to_none=True)
            reset_memory(device)
            break
        tried.append({"batch_size": batch_size, "fits": True, "peak_memory_gib": peak_memory_gib(device)})
        best = batch_size
        batch_size *= 2
    if best is None:
        raise RuntimeError(f"not even batch {start} fits on {device}: free the GPU's memory and run again")
    return best, tried


def time_training(
    module: ExplainerModule, precision: str, batch_size: int, sizes: dict, channels_last: bool
) -> dict[str, Any]:
    device = module.device
    step = TrainStep(module, precision)
    batch = synthetic_batch(batch_size, sizes["image_size"], device, channels_last)
    reset_memory(device)
    start = time.perf_counter()
    step(batch)  # the first step pays for cuDNN's choices, and for compilation when compiled
    synchronize(device)
    first = time.perf_counter() - start
    seconds = median_seconds(lambda: step(batch), device, sizes["steps"], sizes["warmup"])
    return {
        "precision": precision,
        "channels_last": channels_last,
        "batch_size": batch_size,
        "image_size": sizes["image_size"],
        "step_seconds": seconds,
        "first_step_seconds": first,
        "images_per_second": batch_size / seconds,
        "peak_memory_gib": peak_memory_gib(device),
        "loss": float(step.loss),
    }


def training(args: argparse.Namespace, sizes: dict, device: torch.device, mixed: str, report: dict) -> None:
    rows = report["training"]["rows"]
    module = build_module(args.dry_run, device)
    rows.append({"setup": f"fp32, batch {sizes['baseline_batch']}", "compiled": False})
    rows[-1].update(time_training(module, "32-true", sizes["baseline_batch"], sizes, channels_last=False))
    save(args, report)
    del module
    reset_memory(device)

    module = build_module(args.dry_run, device)
    Accelerate(channels_last=True).setup(None, module, "fit")
    start = sizes["baseline_batch"] if device.type == "cuda" else 2
    best, tried = largest_batch(TrainStep(module, mixed), start, sizes["max_batch"], sizes["image_size"], True)
    report["training"]["batch_search"] = tried
    rows.append({"setup": f"{mixed} + channels-last, batch {best} (largest that fits)", "compiled": False})
    rows[-1].update(time_training(module, mixed, best, sizes, channels_last=True))
    report["training"]["largest_batch"] = best
    save(args, report)
    del module
    reset_memory(device)


def compiled_training(args: argparse.Namespace, sizes: dict, device: torch.device, mixed: str, report: dict) -> None:
    """The mixed-precision channels-last row again, with both networks compiled (measured last: compiling
    takes the longest, and a run stopped at the time limit keeps every other section)."""
    rows, best = report["training"]["rows"], report["training"]["largest_batch"]
    if args.no_compile:
        report["training"]["compile"] = "skipped (--no-compile)"
        return
    module = build_module(args.dry_run, device)
    accelerate = Accelerate(
        channels_last=True, compile=True, compile_classifier=True, compile_backend=sizes["compile_backend"]
    )
    accelerate.setup(None, module, "fit")
    label = f"{mixed} + channels-last + compile, batch {best}"
    rows.append({"setup": label, "compiled": True, "compile_backend": sizes["compile_backend"] or "inductor"})
    try:
        rows[-1].update(time_training(module, mixed, best, sizes, channels_last=True))
    except RuntimeError as err:
        if not out_of_memory(err):
            raise
        rows[-1].update({"error": f"out of memory at batch {best}"})
    save(args, report)
    del module
    reset_memory(device)


def explain_and_rise(args: argparse.Namespace, sizes: dict, device: torch.device, mixed: str, report: dict) -> None:
    module = build_module(args.dry_run, device).eval()
    size = sizes["image_size"]
    with tempfile.TemporaryDirectory() as work:
        loaded = explainer.load(export_explainer(module, Path(work) / "explainer"), map_location=device)
    images = synthetic_batch(sizes["explain_batch"], size, device).image
    n = len(images)

    @torch.no_grad()
    def bare() -> None:
        loaded.net(images)

    rows = report["explain"]["rows"]
    forward = median_seconds(bare, device, sizes["steps"], sizes["warmup"])
    rows.append({"setup": "mask network forward, fp32", "images_per_second": n / forward, "batch_size": n})
    for precision in (None, mixed):
        seconds = median_seconds(
            lambda p=precision: loaded.explain(images, precision=p), device, sizes["steps"], sizes["warmup"]
        )
        rows.append(
            {
                "setup": f"explain(), {precision or 'fp32'}",
                "precision": precision or "32-true",
                "batch_size": n,
                "images_per_second": n / seconds,
                "x_bare_forward": seconds / forward,
            }
        )
    save(args, report)

    classifier = module.classifier
    images = images[: sizes["rise_images"]]
    with torch.no_grad():
        classes = classifier(images).argmax(1, keepdim=True)
    rise = build_method("rise", classifier, num_masks=sizes["rise_masks"], batch_size=sizes["rise_batch"])
    for precision in ("32-true", mixed):

        def run(p: str = precision) -> None:
            with torch.no_grad(), autocast(device, p):
                rise(images, classes)

        seconds = median_seconds(run, device, 1, sizes["rise_warmup"])
        report["rise"]["rows"].append(
            {
                "setup": f"RISE N={sizes['rise_masks']}, {'fp32' if precision == '32-true' else precision}",
                "precision": precision,
                "num_masks": sizes["rise_masks"],
                "images": len(images),
                "seconds_per_image": seconds / len(images),
                "images_per_second": len(images) / seconds,
            }
        )
    save(args, report)


def insertion_deletion(args: argparse.Namespace, sizes: dict, device: torch.device, report: dict) -> None:
    module = build_module(args.dry_run, device).eval()
    classifier = module.classifier
    size, step = sizes["image_size"], sizes["insdel_step"]
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(sizes["insdel_images"], 3, size, size, generator=gen).to(device)
    maps = torch.rand(sizes["insdel_images"], 1, size, size, generator=gen).to(device)
    with torch.no_grad():
        classes = classifier(images).argmax(1, keepdim=True)
    steps = num_steps(size, size, step)
    perturbed = 2 * len(images) * (steps + 1)
    results = {}
    for name, fn in (
        ("one forward pass per step", lambda: insertion_deletion_per_step(classifier, images, maps, classes, step)),
        (
            f"batched (chunks of {sizes['insdel_chunk']})",
            lambda: insertion_deletion_batched(classifier, images, maps, classes, step, sizes["insdel_chunk"]),
        ),
    ):
        seconds = median_seconds(lambda f=fn, k=name: results.__setitem__(k, f()), device, 1, 1)
        report["insertion_deletion"]["rows"].append(
            {
                "setup": name,
                "images": len(images),
                "steps": steps,
                "perturbed_images": perturbed,
                "seconds": seconds,
                "images_per_second": perturbed / seconds,
                **results[name],
            }
        )
    loop, batch = results.values()
    report["insertion_deletion"]["max_auc_difference"] = max(abs(loop[k] - batch[k]) for k in loop)
    save(args, report)


def data_loading(args: argparse.Namespace, sizes: dict, report: dict) -> None:
    """The data modules' loaders on this machine's cores, in a process of their own (``benchmarks/data_loading.py``)."""
    workers = 2 if args.dry_run else max(1, min(16, os.cpu_count() or 1))
    out = Path(args.out) / "data_loading.json"
    command = [sys.executable, "-m", "benchmarks.data_loading", "--images", str(sizes["loader_images"])]
    command += ["--workers", str(workers), "--out", str(out), "--gpu-json", str(Path(args.out) / "gpu.json")]
    console.print(f"[bold]data loading[/bold]: {' '.join(command[1:])}")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=150)
    if done.returncode != 0 or not out.is_file():
        report["data_loading"]["rows"].append({"setup": "data loading", "error": done.stderr.strip()[-300:]})
        save(args, report)
        return
    loading = json.loads(out.read_text())
    for name, row in loading["results"].items():
        report["data_loading"]["rows"].append(
            {
                "setup": name,
                "workers": workers,
                "images_per_second": row["steady_img_per_s"],
                "one_worker_images_per_second": row["one_worker_img_per_s"],
            }
        )
    save(args, report)


def gpu_tests(args: argparse.Namespace, report: dict) -> None:
    """Runs the tests marked ``gpu`` (each skips without CUDA; the DDP one without two GPUs)."""
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    start = time.perf_counter()
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=args.tests_timeout)
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    report["tests"] = {
        "command": " ".join(command[1:]),
        "returncode": run.returncode,
        "summary": lines[-1] if lines else run.stderr[-500:],
        "seconds": time.perf_counter() - start,
    }
    if run.returncode != 0:
        report["tests"]["output_tail"] = (run.stdout + run.stderr)[-4000:]
    save(args, report)


def environment(device: torch.device, mixed: str, dry_run: bool) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if cuda else None,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "mixed_precision": mixed,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "dry_run": dry_run,
    }


def ratios(report: dict) -> dict[str, float]:
    """The figures the check is for: each as a ratio of two rows measured in this run."""
    out: dict[str, float] = {}
    train = [r for r in report["training"]["rows"] if "images_per_second" in r]
    if len(train) >= 2:
        for row in train[1:]:
            out[f"training: {row['setup']} / {train[0]['setup']}"] = (
                row["images_per_second"] / train[0]["images_per_second"]
            )
    explain = {r["setup"]: r for r in report["explain"]["rows"]}
    rise = report["rise"]["rows"]
    if explain and rise:
        fastest = max(r["images_per_second"] for r in explain.values() if r["setup"].startswith("explain"))
        out["explain() / RISE, images per second (each at its best precision)"] = fastest / max(
            r["images_per_second"] for r in rise
        )
    loading = [r for r in report.get("data_loading", {}).get("rows", []) if "images_per_second" in r]
    voc = [r for r in loading if r["setup"].startswith("VOC2007 train")]
    if voc and train:
        best_train = max(r["images_per_second"] for r in train)
        best_loader = max(voc, key=lambda r: r["images_per_second"])
        out[f"data loader ({best_loader['setup']}, {best_loader['workers']} workers) / fastest training, images/s"] = (
            best_loader["images_per_second"] / best_train
        )
        out["workers needed for the fastest training, at one worker's images/s"] = best_train / max(
            r["one_worker_images_per_second"] for r in voc
        )
    insdel = report["insertion_deletion"]["rows"]
    if len(insdel) == 2:
        out["insertion/deletion: speed-up of the batched metric over one pass per step"] = (
            insdel[0]["seconds"] / insdel[1]["seconds"]
        )
    return out


def markdown(report: dict) -> str:
    env = report["environment"]
    cuda = f", CUDA {env['cuda']}" if env["gpus"] else ""
    lines = [
        f"# GPU check{' (dry run on the CPU: tiny sizes, not GPU figures)' if report['dry_run'] else ''}",
        "",
        f"Device: **{env['device']}** (torch {env['torch']}{cuda}, mixed precision "
        f"{env['mixed_precision']}); written by `benchmarks/gpu_check.py`, "
        f"finished {report['finished'] or 'not yet (a run stopped early)'}.",
        "",
    ]
    tests = report.get("tests")
    if tests:
        lines += [f"Tests marked gpu: `{tests['summary']}` (exit status {tests['returncode']}).", ""]
    lines += ["| section | setup | batch | images/s | peak GiB | notes |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for section in SECTIONS:
        for row in report[section]["rows"]:
            ips = row.get("images_per_second")
            mem = row.get("peak_memory_gib")
            notes = []
            if "first_step_seconds" in row:
                notes.append(f"step {row['step_seconds']:.3f} s, first step {row['first_step_seconds']:.1f} s")
            if "x_bare_forward" in row:
                notes.append(f"{row['x_bare_forward']:.2f}x the bare forward's time")
            if "seconds_per_image" in row:
                notes.append(f"{row['seconds_per_image']:.2f} s per image")
            if "perturbed_images" in row:
                notes.append(f"{row['perturbed_images']} perturbed images in {row['seconds']:.2f} s")
            if "one_worker_images_per_second" in row:
                notes.append(f"{row['workers']} workers; one worker {row['one_worker_images_per_second']:.1f} images/s")
            if "error" in row:
                notes.append(row["error"])
            batch = row.get("batch_size", row.get("images", ""))
            lines.append(
                f"| {section} | {row['setup']} | {batch} | {f'{ips:.1f}' if ips else ''} | "
                f"{f'{mem:.1f}' if mem is not None else ''} | {'; '.join(notes)} |"
            )
    lines += ["", "| ratio | value |", "| --- | ---: |"]
    lines += [f"| {name} | {value:.2f}x |" for name, value in report["ratios"].items()]
    if "max_auc_difference" in report["insertion_deletion"]:
        lines += [
            "",
            f"Insertion/deletion AUCs, batched against the loop: max difference "
            f"{report['insertion_deletion']['max_auc_difference']:.2e}.",
        ]
    return "\n".join(lines) + "\n"


def save(args: argparse.Namespace, report: dict) -> None:
    """Writes ``gpu.json`` and ``gpu.md`` atomically (after every section)."""
    report["ratios"] = ratios(report)
    out = Path(args.out)
    write_atomic(out / "gpu.json", json.dumps(report, indent=2))
    write_atomic(out / "gpu.md", markdown(report))


def print_table(report: dict) -> None:
    table = Table(title=f"GPU check on {report['environment']['device']}" + (" (dry run)" if report["dry_run"] else ""))
    for column, justify in (("section", "left"), ("setup", "left"), ("batch", "right"), ("images/s", "right")):
        table.add_column(column, justify=justify)
    for section in SECTIONS:
        for row in report[section]["rows"]:
            ips = row.get("images_per_second")
            table.add_row(
                section,
                row["setup"],
                str(row.get("batch_size", row.get("images", ""))),
                f"{ips:.1f}" if ips else row.get("error", ""),
            )
    console.print(table)
    ratio_table = Table(title="ratios")
    ratio_table.add_column("ratio")
    ratio_table.add_column("value", justify="right")
    for name, value in report["ratios"].items():
        ratio_table.add_row(name, f"{value:.2f}x")
    console.print(ratio_table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU with tiny sizes")
    parser.add_argument(
        "--out",
        default=None,
        help="folder of gpu.json and gpu.md (default: benchmarks/results, "
        "or benchmarks/results/gpu_dry_run with --dry-run)",
    )
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled training row")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the tests marked gpu")
    parser.add_argument("--tests-timeout", type=int, default=240, help="seconds allowed to the tests marked gpu")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = str(REPO / "benchmarks" / "results" / ("gpu_dry_run" if args.dry_run else ""))
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run this on a GPU machine, or check the code paths with --dry-run on the CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    sizes = SIZES["dry_run" if args.dry_run else "gpu"]
    mixed = "bf16-mixed" if args.dry_run else resolve_precision("auto-mixed")
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "environment": environment(device, mixed, args.dry_run),
        "sizes": sizes,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "finished": None,
        "networks": "dry run: unet (width 8, depth 2) and digitnet"
        if args.dry_run
        else "resnet50_voc preset: deeplabv3_resnet50 mask network, resnet50 classifier (random weights)",
        "training": {"rows": []},
        "explain": {"rows": []},
        "rise": {"rows": []},
        "insertion_deletion": {"rows": []},
        "data_loading": {"rows": []},
    }
    start = time.perf_counter()
    if not args.skip_tests:
        gpu_tests(args, report)
    training(args, sizes, device, mixed, report)
    explain_and_rise(args, sizes, device, mixed, report)
    insertion_deletion(args, sizes, device, report)
    data_loading(args, sizes, report)
    compiled_training(args, sizes, device, mixed, report)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report["seconds"] = time.perf_counter() - start
    save(args, report)
    print_table(report)
    console.print(f"wrote {Path(args.out) / 'gpu.json'} and gpu.md in {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
