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

from prototypes import EVAL_SCENES, SCENES, control_row, evaluate, fit_heads, prepare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", default="checkpoints/quickstart/classifier.ckpt")
    parser.add_argument("--k", type=int, nargs="+", default=[3, 5])
    parser.add_argument(
        "--scenes",
        default="quickstart",
        choices=sorted(SCENES),
        help="evaluation scenes (see benchmarks/prototypes.py)",
    )
    parser.add_argument("--eval-scenes", type=int, default=EVAL_SCENES, help="validation scenes")
    args = parser.parse_args(argv)
    setup = prepare(args.classifier, args.scenes, "val", eval_scenes=args.eval_scenes)
    print(f"{args.scenes} scenes, {args.eval_scenes} validation images, classifier {args.classifier}", flush=True)
    sample = setup.module.location_sample
    for k in args.k:
        control = control_row("random split (control)", setup, k, range(5))
        cc, cs = control["consistency"], control["stability"]
        cc_std, cs_std = control["consistency_std"], control["stability_std"]
        print(f"k={k} control {cc:.3f}±{cc_std:.3f} / {cs:.3f}±{cs_std:.3f}", flush=True)
        for fraction, positive, ridge in itertools.product(
            [0.05, 0.1, 0.25, 0.5, 1.0], [True, False], [0.1, 1.0, 10.0]
        ):
            protos, counts, _ = fit_heads(
                sample, setup.weight, k, 0, ridge=ridge, evidence_fraction=fraction, positive_evidence_only=positive
            )
            row = evaluate(protos, counts, setup.bias, setup.eval_set, setup.reference)
            both = row["consistency"] > cc + cc_std and row["stability"] > cs + cs_std
            print(
                f"  evidence_fraction={fraction} positive_only={positive} ridge={ridge}: "
                f"{row['consistency']:.3f} / {row['stability']:.3f}{'  BOTH' if both else ''}",
                flush=True,
            )


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    main()
