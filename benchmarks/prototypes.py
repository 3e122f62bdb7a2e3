"""Consistency and stability of post-hoc part-prototypes on digit scenes, against random controls.

    python benchmarks/prototypes.py --classifier checkpoints/quickstart/classifier.ckpt
    python benchmarks/prototypes.py --scenes parts --classifier <classifier_parts.yaml's best checkpoint> \
        --out benchmarks/results/prototypes_parts.json

Fits prototype heads for a trained digit-scenes classifier (the quickstart one by default) from the
training split, then scores them on the test split with the part keypoints of the digits (top, centre,
bottom of the stroke) using :class:`~explainer.metrics.prototypes.PrototypeConsistency` and
:class:`~explainer.metrics.prototypes.PrototypeStability`. Every head reconstructs the classifier's head
exactly, so every row has the classifier's predictions; rows differ only in how ``v`` is split:

* ``fitted``: the project's defaults (NMF on the top-evidence locations and positively weighted dimensions);
* ``fitted, original``: every location and every dimension, as in the original method;
* ``random split`` (control): ``p_i = w_i * v`` with ``w`` drawn per feature dimension from a flat Dirichlet
  (random non-negative shares of each weight, summing to ``v``); mean and std over ``--control-seeds``;
  every such prototype keeps the sign pattern of ``v``, so its map is close to the class activation map;
* ``random directions`` (a second control): ``p_i = v / k + z_i - mean_j z_j`` with Gaussian ``z_i`` whose
  per-dimension RMS equals ``v``'s, i.e. random vectors of the head's own scale completed to sum to ``v``;
* ``equal split``: ``p_i = v / k`` (every prototype map is the class activation map), for reference;
* ``NMF parts alone``: the scaled NMF components ``alpha_i p_i`` before the residual is added, a diagnostic
  that does *not* reproduce the classifier (see its logit difference).

``--scenes`` picks the evaluation data: ``quickstart`` (the demo's scenes, 1-3 digits of 26-42 px, with the
demo's ``digitnet``: every feature location sees a whole digit, and one 72/224 box covers all three keypoints,
so the scores measure "peaks on the digit" rather than parts) or ``parts`` (one digit of 80-100% of the
side, with a ``digitnet_local`` classifier from ``configs/quickstart/classifier_parts.yaml``: locations see
parts of a digit and the keypoints fall in different boxes).

``--data cub --data-root <folder holding CUB_200_2011>`` runs the same comparison on CUB-200-2011 with its
15 part keypoints, the paper's setting, for a classifier trained on CUB (e.g. ``train.py fit --config
configs/data/cub.yaml --config configs/model/classifier.yaml`` from a pretrained backbone checkpoint): the
training split is collected, the test (or held-out validation) split is scored, ``--eval-scenes`` caps the
number of evaluation images (0: all) and ``--image-size`` defaults to 224.

Prints a table and writes ``benchmarks/results/prototypes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from explainer.data.base import ExplainerDataModule
from explainer.data.cub import CUB200DataModule
from explainer.data.digits import DigitScenesDataModule
from explainer.metrics.prototypes import PrototypeConsistency, PrototypeStability, prototype_noise
from explainer.modules.prototypes import PrototypeModule
from explainer.nets.prototype_fit import decompose_class
from explainer.nets.prototypes import PrototypeLayer, pooled_linear_head


def random_split(weight: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``[C, k, D]`` random non-negative shares of each weight (flat Dirichlet per dimension), summing to it."""
    gen = torch.Generator().manual_seed(seed)
    draws = -torch.log(torch.rand(*weight.shape, k, generator=gen, dtype=torch.float64))  # Exp(1)
    shares = draws / draws.sum(-1, keepdim=True)
    return (shares * weight.double()[..., None]).permute(0, 2, 1)


def random_directions(weight: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``[C, k, D]`` Gaussian vectors with ``v``'s per-dimension RMS, shifted to sum to ``v``."""
    gen = torch.Generator().manual_seed(seed)
    v = weight.double()
    rms = v.square().mean(1, keepdim=True).sqrt()[:, None, :]  # [C, 1, 1]
    z = torch.randn(v.shape[0], k, v.shape[1], generator=gen, dtype=torch.float64) * rms
    return v[:, None, :] / k + z - z.mean(1, keepdim=True)


EVAL_SCENES = 2000  # about 200 per class (with 500, a hit rate near the 0.8 threshold has a standard error of ~0.06)
SCENES = {"quickstart": {}, "parts": {"min_digits": 1, "max_digits": 1, "digit_scale": (0.8, 1.0)}}


def fit_heads(
    sample: Any, weight: torch.Tensor, k: int, seed: int, **options: Any
) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Prototypes ``[C, k, D]``, real counts, and the scaled NMF parts ``alpha_i p_i`` alone (which do not
    sum to the head: a diagnostic), fitted from a location sample with ``decompose_class``."""
    protos = torch.zeros(weight.shape[0], k, weight.shape[1], dtype=torch.float64)
    parts = torch.zeros_like(protos)
    counts = []
    for c in range(weight.shape[0]):
        dec = decompose_class(sample.class_features(c), weight[c], k, seed=seed, **options)
        protos[c] = dec.prototypes
        parts[c] = dec.alpha[:, None] * dec.components
        counts.append(dec.num_prototypes)
    return protos, counts, parts


@torch.no_grad()
def evaluate(
    protos: torch.Tensor, counts: list[int], bias: torch.Tensor, eval_set: dict[str, Any], reference: torch.Tensor
) -> dict[str, float]:
    """Consistency, stability and logit agreement of a head on precomputed clean / noisy features."""
    num_classes, k, dim = protos.shape
    layer = PrototypeLayer(num_classes, k, dim)
    layer.set_prototypes(protos.float(), bias)
    valid = torch.arange(k)[None, :] < torch.tensor(counts)[:, None]
    consistency = PrototypeConsistency(num_classes, k, eval_set["num_parts"], valid=valid)
    stability = PrototypeStability(num_classes, k, eval_set["num_parts"], valid=valid)
    logits = []
    for feats, noisy, keypoints, labels in eval_set["batches"]:
        out, maps, _ = layer(feats)
        logits.append(out)
        consistency.update(maps, keypoints, labels, eval_set["size"])
        stability.update(maps, layer.maps(noisy), keypoints, labels, eval_set["size"])
    logits = torch.cat(logits)
    return {
        "consistency": consistency.compute().item(),
        "stability": stability.compute().item(),
        "logit_max_abs_diff": (logits - reference).abs().max().item(),
        "argmax_agreement": (logits.argmax(1) == reference.argmax(1)).float().mean().item(),
    }


@dataclass
class Setup:
    """A fitted module, its head, the training location sample and the precomputed evaluation features."""

    module: PrototypeModule
    weight: torch.Tensor
    bias: torch.Tensor
    eval_set: dict[str, Any]
    reference: torch.Tensor
    timings: dict[str, Any]


DATA = ("digits", "cub")


def make_data(
    data: str = "digits",
    scenes: str = "quickstart",
    train_scenes: int = 4000,
    eval_scenes: int = EVAL_SCENES,
    image_size: int = 64,
    root: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    split: str = "test",
) -> ExplainerDataModule:
    """The data module: digit scenes of kind ``scenes`` (``train_scenes`` / ``eval_scenes`` scenes), or
    CUB-200-2011 under ``root`` (scored on ``test``: every official training image is collected; on ``val``:
    10% of each class's training images are held out for scoring)."""
    if data == "digits":
        return DigitScenesDataModule(
            image_size=image_size,
            train_scenes=train_scenes,
            val_scenes=eval_scenes,
            test_scenes=eval_scenes,
            batch_size=batch_size,
            **SCENES[scenes],
        )
    if data == "cub":
        if root is None:
            raise ValueError("--data cub needs --data-root, the folder holding CUB_200_2011")
        return CUB200DataModule(
            root,
            val_fraction=0.1 if split == "val" else 0.0,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
        )
    raise ValueError(f"unknown data '{data}'; expected one of {DATA}")


def prepare(
    classifier: str,
    scenes: str = "quickstart",
    split: str = "test",
    k: int = 3,
    train_scenes: int = 4000,
    eval_scenes: int = EVAL_SCENES,
    image_size: int = 64,
    max_locations: int = 16384,
    seed: int = 0,
    data: str = "digits",
    root: str | None = None,
    num_workers: int = 0,
) -> Setup:
    """Collects the training locations once, fits the module's default head with ``k`` (timed: what train.py
    does per epoch), and computes the clean and noisy features of the evaluation split once (for CUB, of its
    first ``eval_scenes`` images; 0: all)."""
    from rich.progress import track

    torch.manual_seed(seed)
    dm = make_data(data, scenes, train_scenes, eval_scenes, image_size, root, num_workers=num_workers, split=split)
    dm.setup("fit")
    dm.setup("test")
    module = PrototypeModule(
        classifier,
        num_classes=dm.num_classes,
        class_names=dm.class_names,
        prototypes_per_class=k,
        max_locations_per_class=max_locations,
        seed=seed,
        gallery_images_per_class=0,
    )
    weight, bias = pooled_linear_head(module.classifier)
    start = time.perf_counter()
    train_images = 0
    with torch.no_grad():
        for batch in track(dm.train_dataloader(), description="collecting training locations", transient=True):
            module.collect(batch.image, batch.labels)
            train_images += len(batch.image)
    collect_s = time.perf_counter() - start
    summary = module.fit_prototypes(keep_sample=True)
    timings = {
        "collect_seconds": collect_s,
        "decomposition_seconds": summary["decomposition_seconds"],
        "k": k,
        "train_images": train_images,
    }
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    limit = eval_scenes if data == "cub" and eval_scenes > 0 else None
    gen = torch.Generator().manual_seed(seed + 1)
    batches, reference, num_parts, seen = [], [], None, 0
    with torch.no_grad():
        for batch in track(loader, description=f"features of the {split} split", transient=True):
            if limit is not None and seen >= limit:
                break
            if batch.keypoints is None:
                raise ValueError(f"the {split} split of '{data}' has no part keypoints to score prototypes with")
            num_parts = batch.keypoints[0].shape[1]
            feats = module.classifier.net.forward_features(batch.image)
            noisy = module.classifier.net.forward_features(prototype_noise(batch.image, 0.2, 0.25, gen))
            reference.append(module.classifier.net.forward_head(feats))
            batches.append((feats, noisy, batch.keypoints, batch.box_labels))
            seen += len(batch.image)
    eval_set = {"batches": batches, "size": (image_size, image_size), "num_parts": num_parts, "images": seen}
    return Setup(module, weight, bias, eval_set, torch.cat(reference), timings)


CONTROLS = {"random split (control)": random_split, "random directions": random_directions}


def control_row(name: str, setup: Setup, k: int, seeds: range) -> dict[str, Any]:
    """The control ``name`` (a key of ``CONTROLS``) scored for every seed: means, plus the scores' std."""
    runs = [
        evaluate(
            CONTROLS[name](setup.weight, k, s), [k] * setup.weight.shape[0], setup.bias, setup.eval_set, setup.reference
        )
        for s in seeds
    ]
    stacked = {key: torch.tensor([r[key] for r in runs], dtype=torch.float64) for key in runs[0]}
    return {
        "head": name,
        "k": k,
        **{key: v.mean().item() for key, v in stacked.items()},
        "consistency_std": stacked["consistency"].std().item(),
        "stability_std": stacked["stability"].std().item(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", default="checkpoints/quickstart/classifier.ckpt")
    parser.add_argument("--k", type=int, nargs="+", default=[3, 5], help="prototypes per class")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--data", default="digits", choices=DATA, help="digit scenes or CUB-200-2011")
    parser.add_argument("--data-root", default=None, help="with --data cub: the folder holding CUB_200_2011")
    parser.add_argument("--num-workers", type=int, default=0, help="loader workers (CUB images are decoded)")
    parser.add_argument(
        "--scenes", default="quickstart", choices=sorted(SCENES), help="evaluation scenes (see the module docstring)"
    )
    parser.add_argument("--train-scenes", type=int, default=4000)
    parser.add_argument(
        "--eval-scenes",
        type=int,
        default=None,
        help=f"evaluation scenes (digits: default {EVAL_SCENES}); CUB: the most test images (default 0: all)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="default 64 (digits) or 224 (CUB)")
    parser.add_argument("--max-locations", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control-seeds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/prototypes.json")
    args = parser.parse_args(argv)
    if args.eval_scenes is None:
        args.eval_scenes = EVAL_SCENES if args.data == "digits" else 0
    if args.image_size is None:
        args.image_size = 64 if args.data == "digits" else 224
    first_k = args.k[0]
    setup = prepare(
        args.classifier,
        args.scenes,
        args.split,
        first_k,
        args.train_scenes,
        args.eval_scenes,
        args.image_size,
        args.max_locations,
        args.seed,
        args.data,
        args.data_root,
        args.num_workers,
    )
    module, weight, bias = setup.module, setup.weight, setup.bias
    eval_set, reference, sample = setup.eval_set, setup.reference, module.location_sample

    # 3. heads and controls
    rows: list[dict[str, Any]] = []
    options = {
        "ridge": module.hparams.ridge,
        "evidence_fraction": module.hparams.evidence_fraction,
        "positive_evidence_only": module.hparams.positive_evidence_only,
    }
    for k in args.k:
        protos, counts, parts = fit_heads(sample, weight, k, args.seed, **options)
        if k == first_k:  # the module's own fit: the same numbers
            assert torch.allclose(protos.float(), module.layer.prototypes, atol=1e-6)
        rows.append({"head": "fitted", "k": k, **evaluate(protos, counts, bias, eval_set, reference)})
        parts_row = {
            "head": "NMF parts alone (not exact)",
            "k": k,
            **evaluate(parts, counts, bias, eval_set, reference),
        }
        protos, counts, _ = fit_heads(
            sample, weight, k, args.seed, ridge=options["ridge"], evidence_fraction=1.0, positive_evidence_only=False
        )
        rows.append(
            {"head": "fitted, original settings", "k": k, **evaluate(protos, counts, bias, eval_set, reference)}
        )
        rows += [control_row(name, setup, k, range(args.seed, args.seed + args.control_seeds)) for name in CONTROLS]
        equal = weight.double()[:, None, :].expand(-1, k, -1) / k
        rows.append(
            {
                "head": "equal split (class map)",
                "k": k,
                **evaluate(equal, [k] * weight.shape[0], bias, eval_set, reference),
            }
        )
        rows.append(parts_row)
        by_head = {row["head"]: row for row in rows if row["k"] == k}
        fitted = by_head["fitted"]
        for name, key in zip(CONTROLS, ("beats_control", "beats_directions"), strict=True):
            fitted[key] = {metric: fitted[metric] > by_head[name][metric] for metric in ("consistency", "stability")}

    source = (
        {"data": "cub", "data_root": args.data_root}
        if args.data == "cub"
        else {"scenes": args.scenes, "scene_options": SCENES[args.scenes]}
    )
    result = {
        "classifier": args.classifier,
        "classifier_hash": module.classifier.content_hash,
        **source,
        "split": args.split,
        "eval_images": eval_set["images"],
        "image_size": args.image_size,
        "seed": args.seed,
        "control_seeds": args.control_seeds,
        "settings": options,
        "timings": setup.timings,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    from rich.console import Console
    from rich.table import Table

    what = "CUB-200-2011" if args.data == "cub" else f"{args.scenes} digit scenes"
    table = Table(title=f"part-prototypes on {what} ({args.split}, {eval_set['images']} images)")
    for name in ("head", "k", "consistency", "stability", "max |logit diff|", "argmax agree"):
        table.add_column(name, justify="left" if name == "head" else "right")
    for row in rows:
        cons = f"{row['consistency']:.3f}" + (f" ± {row['consistency_std']:.3f}" if "consistency_std" in row else "")
        stab = f"{row['stability']:.3f}" + (f" ± {row['stability_std']:.3f}" if "stability_std" in row else "")
        table.add_row(
            row["head"], str(row["k"]), cons, stab, f"{row['logit_max_abs_diff']:.2e}", f"{row['argmax_agreement']:.3f}"
        )
    console = Console(width=110)
    console.print(table)
    console.print(
        f"collection {setup.timings['collect_seconds']:.1f} s over {setup.timings['train_images']} images, "
        f"decomposition {setup.timings['decomposition_seconds']:.1f} s (k={first_k}); written to {out}"
    )
    return result


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    main()
