"""Train, validate or test any module of the project on any data module, from YAML configs.

python train.py fit --config configs/quickstart/classifier.yaml
python train.py test --config configs/quickstart/classifier.yaml --ckpt_path runs/.../best.ckpt
python train.py fit --help
"""

from explainer.cli import train_main

if __name__ == "__main__":
    train_main()
