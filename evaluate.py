"""Evaluate attribution methods on a data module's test split (see explainer/evaluation/cli.py).

    python evaluate.py --data configs/data/digits.yaml --classifier checkpoints/quickstart/classifier.ckpt \
        --methods explainer=checkpoints/quickstart/explainer,rise,gradcam --metrics all --out results/digits
"""

from explainer.evaluation.cli import main

if __name__ == "__main__":
    main()
