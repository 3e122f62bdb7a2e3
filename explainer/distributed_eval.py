"""``evaluate.py --devices``: the evaluation split across devices, one process each.

``--devices`` is a count (``2``: that many GPUs when CUDA has them, else that many CPU processes), ``cpu:N``
(N CPU processes) or a list of GPUs (``cuda:0,cuda:1``; ``cuda:i`` names GPU ``i``). With one device
``evaluate.py`` runs as a single process, as without ``--devices``.

With N > 1 devices, the test batches are prepared once, as one process would, and batch ``i`` is dealt to
rank ``i % N`` (through temporary files), so every image is evaluated once, in the same batches. N worker
processes (forked from a ``forkserver`` process that imports the evaluation code once) join a process group
(``gloo`` on CPU, ``nccl`` on GPU; ``MASTER_ADDR=127.0.0.1`` and a free local port); with fewer batches than
devices, only as many workers as batches run. After each method the workers exchange
(:func:`combine_shards`) their metric states (sums, reduced as ``Metric.merge_state`` does), their
per-batch values (the batch-means standard error is taken over every batch, in the single-process order),
method seconds, image and image-class pair counts: the rows equal those of one process up to float
summation order. Rank 0 holds batch 0 (the example images) and writes ``results.json`` after every method
(so ``--resume`` works as before), ``results.md``, ``examples.png`` and ``curves.png``. A failing worker
stops the others and the parent raises its error.

CPU workers split the parent's thread budget (``torch.get_num_threads()``: the cores, or
``OMP_NUM_THREADS``) evenly, at least one thread each. Randomised methods (``rise``, ``fido``...) are
seeded alike on every rank, so for its first batch a rank draws what one process would, but not later: their
values agree with a single process in distribution, not digit for digit.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import re
import socket
import tempfile
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor
from torchmetrics import Metric

from explainer.data.batch import Batch
from explainer.evaluation import EvaluationSettings

DEVICES_HELP = "a count (2), cpu:N (N CPU processes) or a list of GPUs (cuda:0,cuda:1)"
PRELOAD = ["explainer.evaluate_cli", "explainer.classifiers", "explainer.methods", "explainer.data",
           "rich.progress", "matplotlib.pyplot"]


def parse_devices(spec: str) -> list[torch.device]:
    """``--devices`` to one ``torch.device`` per process (see the module docstring), validated."""
    text = str(spec).strip().lower()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0

    def error(why: str) -> ValueError:
        return ValueError(f"--devices '{spec}': {why}; use {DEVICES_HELP}")

    if text.isdigit():
        count = int(text)
        if count < 1:
            raise error("needs at least one device")
        if not gpus:
            return [torch.device("cpu")] * count
        if count > gpus:
            raise error(f"asks for {count} GPUs but CUDA has {gpus}")
        return [torch.device("cuda", i) for i in range(count)]
    if text == "cpu" or (text.startswith("cpu:") and "," not in text):
        count = text.partition(":")[2] or "1"
        if not count.isdigit() or int(count) < 1:
            raise error("cpu:N needs a positive number N of processes")
        return [torch.device("cpu")] * int(count)
    devices = []
    for item in (s.strip() for s in text.split(",")):
        if item == "cpu":
            devices.append(torch.device("cpu"))
            continue
        match = re.fullmatch(r"cuda(?::(\d+))?", item)
        if match is None:
            raise error(f"'{item}' is not a device")
        index = int(match[1] or 0)
        if index >= gpus:
            raise error(f"there is no GPU cuda:{index} (CUDA has {gpus})")
        devices.append(torch.device("cuda", index))
    if len({d.type for d in devices}) > 1:
        raise error("mixes CPU and GPU")
    cuda = [d for d in devices if d.type == "cuda"]
    if len(set(cuda)) < len(cuda):
        raise error("names a GPU twice")
    return devices


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evaluate_on_devices(args: argparse.Namespace, methods: dict[str, dict[str, Any]],
                        settings: EvaluationSettings,
                        rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Runs ``evaluate.py`` on the several ``args.devices``; ``None`` for one device (then the caller's
    single-process path runs, on that device when it is named).

    Args:
        args: the parsed ``evaluate.py`` arguments.
        methods: ``{name: options}`` from :func:`explainer.evaluate_cli.parse_methods`.
        settings: the :class:`~explainer.evaluation.EvaluationSettings`.
        rows: the rows already in ``results.json`` (``--resume``); their methods are not evaluated again.

    Returns:
        Every row, as written to ``results.json``.
    """
    devices = parse_devices(args.devices)
    if len(devices) == 1:
        if not args.devices.strip().isdigit():  # a named device: run there
            if args.device not in ("auto", str(devices[0])):
                raise ValueError(f"--device {args.device} and --devices {args.devices} disagree; give one")
            args.device = str(devices[0])
        return None
    if args.device != "auto":
        raise ValueError(f"--device {args.device} names one device and --devices {args.devices} several; "
                         "give only --devices")
    from rich.console import Console

    from explainer.evaluate_cli import build_datamodule, pending_methods
    from explainer.evaluation import collect_batches, write_results

    out, console = Path(args.out), Console()
    if next(pending_methods(methods, args, {r["method"] for r in rows}), None) is None:  # nothing left to do
        write_results(rows, out)
    else:
        # the test batches are prepared once, here, as one process would, and dealt round-robin to the
        # workers through files (batch i to rank i % N); a worker without batches would be idle
        datamodule = build_datamodule(args.data, args.data_arg)
        batches = collect_batches(datamodule, args.limit, torch.device("cpu"))
        if len(batches) < len(devices):
            console.print(f"{len(batches)} test batches: evaluating on {len(batches)} of {len(devices)} "
                          "devices")
            devices = devices[:len(batches)]
        world = len(devices)
        threads = max(1, torch.get_num_threads() // world)
        # workers fork from a clean server process that imports the evaluation code once (spawned workers
        # would each import it again)
        multiprocessing.set_forkserver_preload([*PRELOAD, type(datamodule).__module__])
        with tempfile.TemporaryDirectory(prefix="evaluate-shards-") as folder:
            for rank in range(world):
                torch.save([{f.name: getattr(b, f.name) for f in fields(b)} for b in batches[rank::world]],
                           Path(folder) / f"shard-{rank}.pt")
            num_batches = len(batches)
            del batches
            try:
                mp.start_processes(_worker, nprocs=world, join=True, start_method="forkserver", args=(
                    devices, free_port(), threads, folder, num_batches, args, methods, settings, rows))
            except (mp.ProcessRaisedException, mp.ProcessExitedException) as failure:
                rank = failure.error_index
                raise RuntimeError(f"evaluation worker {rank} of {world} ({devices[rank]}) failed, the "
                                   f"others were stopped:\n{str(failure).strip()}") from None
        rows = json.loads((out / "results.json").read_text())
    console.print((out / "results.md").read_text())
    return rows


def _worker(rank: int, devices: list[torch.device], port: int, threads: int, folder: str, num_batches: int,
            args: argparse.Namespace, methods: dict[str, dict[str, Any]], settings: EvaluationSettings,
            rows: list[dict[str, Any]]) -> None:
    """One worker: joins the group, evaluates its shard of the ``num_batches``; rank 0 writes the files."""
    torch.set_num_threads(threads)
    device = devices[rank]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=len(devices), device_id=device,
                                timeout=timedelta(minutes=30))
    else:
        dist.init_process_group("gloo", rank=rank, world_size=len(devices), timeout=timedelta(minutes=30))
    try:
        saved = torch.load(Path(folder) / f"shard-{rank}.pt", weights_only=True)
        shard = [Batch(**b).to(device) for b in saved]
        _evaluate_shard(rank, len(devices), device, shard, num_batches, args, methods, settings, list(rows))
    finally:
        dist.destroy_process_group()


def _evaluate_shard(rank: int, world: int, device: torch.device, shard: list[Batch], num_batches: int,
                    args: argparse.Namespace, methods: dict[str, dict[str, Any]],
                    settings: EvaluationSettings, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.progress import Progress

    from explainer.classifiers import FrozenClassifier
    from explainer.evaluate_cli import build_datamodule, pending_methods, save_curves
    from explainer.evaluation import evaluate_method, save_example_grid, write_results
    from explainer.methods import build_method

    out = Path(args.out)
    done = {r["method"] for r in rows}
    datamodule = build_datamodule(args.data, args.data_arg)  # not set up: its classes and constants
    classifier = FrozenClassifier.from_checkpoint(args.classifier, num_classes=datamodule.num_classes)
    classifier = classifier.to(device)
    combine = functools.partial(combine_shards, rank=rank, world=world, num_batches=num_batches)
    console = Console()
    examples = {}
    with Progress(console=console, disable=rank != 0) as bar:
        for name, method_name, options in pending_methods(methods, args, done, console if rank == 0 else None):
            torch.manual_seed(args.seed)
            method = build_method(method_name, classifier, **options).to(device)
            task = bar.add_task(f"{name} (rank 0 of {world})", total=sum(len(b) for b in shard))
            method_rows, examples[name] = evaluate_method(
                name, method, shard, classifier, datamodule.num_classes, settings,
                progress=lambda n, t=task: bar.advance(t, n), combine=combine)
            if rank == 0:
                rows += method_rows
                write_results(rows, out)  # after every method, so an interrupted run can --resume
    if rank == 0:
        write_results(rows, out)
        if examples:
            save_example_grid(examples, datamodule, out / "examples.png", datamodule.class_names)
            save_curves(methods, examples, classifier, out / "curves.png", args.insertion_step)
    dist.barrier()  # no rank leaves while rank 0 still writes (a failure there must stop the others)


def combine_shards(totals: dict[str, Metric], per_batch: dict[str, list[dict[str, float]]], seconds: float,
                   images_seen: int, pairs: int, *, rank: int, world: int, num_batches: int
                   ) -> tuple[dict[str, Metric], dict[str, list[dict[str, float]]], float, int, int]:
    """The ``combine`` hook of :func:`~explainer.evaluation.evaluate_method`: every rank's results of one
    method, gathered from all ranks (a collective call: every rank calls it, also one without batches).

    Args:
        totals: this rank's summed metrics (empty for a rank without batches); the other ranks' states are
            merged into them.
        per_batch: this rank's per-batch metric values, in the order of its shard ``rank::world``.
        seconds, images_seen, pairs: this rank's method time, image count and image-class pair count.
        rank, world: this process's rank and the number of processes.
        num_batches: the number of batches over all ranks.

    Returns:
        ``(totals, per_batch, seconds, images_seen, pairs)`` of every rank, ``per_batch`` in global batch
        order (batch ``i`` comes from rank ``i % world``).
    """
    mine = {
        "states": {name: {k: _to_cpu(v) for k, v in m.metric_state.items()} for name, m in totals.items()},
        "updates": {name: m._update_count for name, m in totals.items()},
        "per_batch": per_batch, "seconds": seconds, "images": images_seen, "pairs": pairs,
        "batches": len(next(iter(per_batch.values()), [])),
    }
    shards: list[Any] = [None] * world
    dist.all_gather_object(shards, mine)
    counts = [s["batches"] for s in shards]
    if totals and counts != [len(range(r, num_batches, world)) for r in range(world)]:
        raise RuntimeError(f"ranks hold {counts} batches, expected {num_batches} dealt round-robin")
    for other, shard in enumerate(shards):
        if images_seen and shard["images"] and set(shard["states"]) != set(totals):
            raise RuntimeError(f"rank {other} computed metrics {sorted(shard['states'])}, rank {rank} "
                               f"{sorted(totals)}: their first test batches differ in ground truth")
        if other == rank:
            continue
        for name, total in totals.items():
            total.merge_state({k: _to(v, total.device) for k, v in shard["states"][name].items()})
            total._update_count += shard["updates"][name]  # merge_state does not count the merged updates
    ordered = {name: [shards[i % world]["per_batch"][name][i // world] for i in range(num_batches)]
               for name in totals}
    return (totals, ordered, sum(s["seconds"] for s in shards), sum(s["images"] for s in shards),
            sum(s["pairs"] for s in shards))


def _to_cpu(value: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    return [v.detach().cpu() for v in value] if isinstance(value, list) else value.detach().cpu()


def _to(value: Tensor | list[Tensor], device: torch.device) -> Tensor | list[Tensor]:
    return [v.to(device) for v in value] if isinstance(value, list) else value.to(device)
