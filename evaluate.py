"""Evaluate attribution methods on a data module's test split (see explainer/evaluate_cli.py).

    python evaluate.py --data configs/data/digits.yaml --classifier checkpoints/quickstart/classifier.ckpt \
        --methods explainer=checkpoints/quickstart/explainer,rise,gradcam --metrics all --out results/digits
"""

from explainer.evaluate_cli import main

if __name__ == "__main__":
    main()
