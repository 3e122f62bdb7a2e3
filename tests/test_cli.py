"""train.py / LightningCLI: a fast_dev_run, config errors, links, saved configs and checkpoint errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from explainer.cli import make_cli

CLASSIFIER = "configs/quickstart/classifier.yaml"


def _args(repo: Path, *extra: str) -> list[str]:
    return ["--config", str(repo / CLASSIFIER), "--model.init_args.backbone", "tests.helpers:tiny_net", *extra]


def test_fast_dev_run_of_the_classifier_through_train_py(repo, tmp_path, tiny_digits_args):
    env = {**os.environ, "PYTHONPATH": str(repo), "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable,
        str(repo / "train.py"),
        "fit",
        *_args(repo, *tiny_digits_args),
        "--trainer.fast_dev_run",
        "true",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "`max_steps=1` reached" in proc.stderr + proc.stdout  # one training step, then it stopped


def test_fit_saves_config_checkpoint_and_links_classes(repo, in_tmp, tiny_digits_args):
    cli = make_cli(["fit", *_args(repo, *tiny_digits_args), "--trainer.max_epochs", "1"])
    assert cli.model.hparams.num_classes == 10
    assert cli.model.hparams.class_names == [str(d) for d in range(10)]
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.is_file() and best.parent.name == "checkpoints"
    assert Path("runs/classifier") in best.parents  # a classifier run is filed under its stage
    assert (best.parent.parent / "config.yaml").is_file()
    # a second run gets its own folder: nothing of the first is overwritten
    first_config = (best.parent.parent / "config.yaml").read_bytes()
    cli2 = make_cli(["fit", *_args(repo, *tiny_digits_args), "--trainer.max_epochs", "1"])
    best2 = Path(cli2.trainer.checkpoint_callback.best_model_path)
    assert best2.parent.parent != best.parent.parent
    assert (best.parent.parent / "config.yaml").read_bytes() == first_config
    ckpt = torch.load(best, map_location="cpu", weights_only=True)  # plain containers only
    assert ckpt["hyper_parameters"]["backbone"] == "tests.helpers:tiny_net"


def test_wandb_logs_offline_with_images(repo, in_tmp, tiny_digits_args, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cli = make_cli(
        [
            "fit",
            *_args(repo, *tiny_digits_args),
            "--trainer.max_epochs",
            "1",
            "--trainer.callbacks+=explainer.callbacks.PredictionPanel",
        ]
    )
    from lightning.pytorch.loggers import WandbLogger

    assert isinstance(cli.trainer.logger, WandbLogger)
    cli.trainer.logger.experiment.finish()
    offline_runs = list((in_tmp / "runs" / "wandb").glob("offline-run-*"))
    assert offline_runs, "wandb wrote no offline run"
    pngs = list((in_tmp / "runs").rglob("val-predictions-epoch000.png"))
    assert pngs, "the prediction panel was not saved"


def test_unknown_config_key_names_the_key(repo, in_tmp, capsys):
    with pytest.raises(SystemExit) as err:
        make_cli(["fit", *_args(repo), "--model.init_args.learning_rat", "0.1"])
    assert err.value.code != 0
    assert "learning_rat" in capsys.readouterr().err


def test_wrong_type_names_the_key(repo, in_tmp, capsys):
    with pytest.raises(SystemExit) as err:
        make_cli(["fit", *_args(repo), "--trainer.max_epochs", "many"])
    assert err.value.code != 0
    assert "max_epochs" in capsys.readouterr().err


def test_checkpoint_with_another_class_count_is_refused(repo, in_tmp, tiny_digits_args):
    from tests.classifiers.test_frozen import _classifier_checkpoint

    _, path = _classifier_checkpoint(in_tmp, num_classes=7)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"7 classes.*10"):
        make_cli(["test", *_args(repo, *tiny_digits_args), "--ckpt_path", str(path)])
    assert path.read_bytes() == before


def test_missing_checkpoint_is_a_clear_error(repo, in_tmp, tiny_digits_args):
    with pytest.raises(FileNotFoundError):
        make_cli(["test", *_args(repo, *tiny_digits_args), "--ckpt_path", str(in_tmp / "nope.ckpt")])
