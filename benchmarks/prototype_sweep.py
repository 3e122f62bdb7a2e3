"""Validation sweep of the prototype-fitting options against the random-split control.

    python benchmarks/prototype_sweep.py --classifier checkpoints/quickstart/classifier.ckpt
    python benchmarks/prototype_sweep.py --scenes parts --classifier <classifier_parts.yaml's best checkpoint>

For k in 3 and 5, fits heads for every combination of ``evidence_fraction``, ``positive_evidence_only``
and ``ridge`` from the training split and prints consistency / stability on the *validation* split next to
the random-split control (mean ± std over 5 seeds); ``BOTH`` marks a setting that beats the control's mean
plus one standard deviation on both. Uses the functions of ``benchmarks/prototypes.py``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prototypes import SCENES, evaluate, fit_heads, random_split  # noqa: E402

from explainer.data.digits import DigitScenesDataModule  # noqa: E402
from explainer.metrics.prototypes import prototype_noise  # noqa: E402
from explainer.modules.prototypes import PrototypeModule  # noqa: E402
from explainer.nets.prototypes import pooled_linear_head  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", default="checkpoints/quickstart/classifier.ckpt")
    parser.add_argument("--k", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--scenes", default="quickstart", choices=sorted(SCENES),
                        help="evaluation scenes (see benchmarks/prototypes.py)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    dm = DigitScenesDataModule(image_size=64, train_scenes=4000, val_scenes=500, test_scenes=500, batch_size=64,
                               **SCENES[args.scenes])
    dm.setup("fit")
    module = PrototypeModule(args.classifier, num_classes=10, class_names=dm.class_names, prototypes_per_class=3,
                             max_locations_per_class=16384, seed=0, gallery_images_per_class=0)
    weight, bias = pooled_linear_head(module.classifier)
    for batch in dm.train_dataloader():
        module.collect(batch.image, batch.labels)
    module.fit_prototypes(keep_sample=True)
    sample = module.location_sample
    gen = torch.Generator().manual_seed(1)
    batches, ref = [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            feats = module.classifier.net.forward_features(batch.image)
            noisy = module.classifier.net.forward_features(prototype_noise(batch.image, 0.2, 0.25, gen))
            ref.append(module.classifier.net.forward_head(feats))
            batches.append((feats, noisy, batch.keypoints, batch.box_labels))
    eval_set = {"batches": batches, "size": (64, 64)}
    reference = torch.cat(ref)
    for k in args.k:
        controls = [evaluate(random_split(weight, k, s), [k] * 10, bias, eval_set, reference) for s in range(5)]
        cc = torch.tensor([c["consistency"] for c in controls])
        cs = torch.tensor([c["stability"] for c in controls])
        print(f"k={k} control {cc.mean():.3f}±{cc.std():.3f} / {cs.mean():.3f}±{cs.std():.3f}", flush=True)
        for fraction, positive, ridge in itertools.product([0.05, 0.1, 0.25, 0.5, 1.0], [True, False],
                                                           [0.1, 1.0, 10.0]):
            protos, counts, _ = fit_heads(sample, weight, k, 0, ridge=ridge, evidence_fraction=fraction,
                                          positive_evidence_only=positive)
            row = evaluate(protos, counts, bias, eval_set, reference)
            both = (row["consistency"] > cc.mean() + cc.std()) and (row["stability"] > cs.mean() + cs.std())
            print(f"  evidence_fraction={fraction} positive_only={positive} ridge={ridge}: "
                  f"{row['consistency']:.3f} / {row['stability']:.3f}{'  BOTH' if both else ''}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    main()
