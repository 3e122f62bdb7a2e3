"""Validation under DDP on a split the world size does not divide: every sample once, one process's metrics."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from explainer.data.sampling import UnpaddedShards
from tests.helpers import write_classifier_checkpoint


def _train_py(repo, cwd, out, subcommand: str, devices: int, *extra: str) -> None:
    """Runs ``train.py <subcommand>`` with a tiny Explainer on ``devices`` CPU processes under DDP."""
    env = {**os.environ, "PYTHONPATH": str(repo), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        str(repo / "train.py"),
        subcommand,
        "--config",
        str(repo / "configs/quickstart/explainer.yaml"),
        "--model.init_args.classifier",
        str(cwd / "classifier-10.ckpt"),
        "--model.init_args.mask_net",
        "unet",
        "--model.init_args.mask_net_kwargs",
        '{"width": 4, "depth": 2}',
        "--model.init_args.encoder_from_classifier",
        "false",
        "--data.init_args.image_size",
        "32",
        "--data.init_args.batch_size",
        "4",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.default_root_dir",
        str(out),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        str(devices),
        "--trainer.strategy",
        "ddp",
        *extra,
    ]
    run = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def _validate(repo, cwd, out, devices: int) -> dict[str, float]:
    _train_py(repo, cwd, out, "validate", devices, "--data.init_args.val_scenes", "13")
    values = {}
    for row in csv.DictReader((out / "explainer" / "version_0" / "metrics.csv").open()):
        values.update({k: float(v) for k, v in row.items() if k.startswith("val") and v not in ("", None)})
    return values


def test_two_processes_validate_as_one(repo, tmp_path):
    write_classifier_checkpoint(tmp_path)
    one = _validate(repo, tmp_path, tmp_path / "one", 1)
    two = _validate(repo, tmp_path, tmp_path / "two", 2)
    assert len(one) >= 20 and one.keys() == two.keys()
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-5), key


def test_unpadded_shards_cover_each_sample_once():
    shards = [list(UnpaddedShards(range(13), 3, rank)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(13))
    assert [len(UnpaddedShards(range(13), 3, rank)) for rank in range(3)] == [5, 4, 4]


def test_two_process_training_runs_and_exports(repo, tmp_path):
    # Lightning re-creates the training loader with its distributed sampler: the loader must allow it
    write_classifier_checkpoint(tmp_path)
    _train_py(
        repo,
        tmp_path,
        tmp_path / "runs",
        "fit",
        2,
        "--data.init_args.train_scenes",
        "20",
        "--data.init_args.val_scenes",
        "7",
        "--trainer.max_epochs",
        "1",
    )
    assert (tmp_path / "checkpoints" / "quickstart" / "explainer" / "config.json").is_file()
