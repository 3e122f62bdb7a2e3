"""A deterministic run killed with SIGKILL at any step and resumed from last.ckpt ends where the uninterrupted one
does."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch

from explainer.data.sampling import EpochShuffle
from explainer.resume import rng_states, set_rng_states
from tests.helpers import write_classifier_checkpoint

# 48 training scenes in batches of 8: 6 steps per epoch, 2 epochs
TINY = [
    "--seed_everything",
    "0",
    "--trainer.deterministic",
    "true",
    "--model.init_args.mask_net",
    "unet",
    "--model.init_args.mask_net_kwargs",
    '{"width": 4, "depth": 2}',
    "--model.init_args.encoder_from_classifier",
    "false",
    "--data.init_args.image_size",
    "32",
    "--data.init_args.train_scenes",
    "48",
    "--data.init_args.val_scenes",
    "16",
    "--data.init_args.test_scenes",
    "8",
    "--data.init_args.batch_size",
    "8",
    "--trainer.max_epochs",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--checkpoint.save_last",
    "true",
    "--checkpoint.every_n_train_steps",
    "1",
]
STEPS = 12


def _train(repo, cwd, out, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo), "WANDB_MODE": "disabled"}
    command = [
        sys.executable,
        str(repo / "train.py"),
        "fit",
        "--config",
        str(repo / "configs/quickstart/explainer.yaml"),
        *TINY,
        "--model.init_args.classifier",
        str(cwd / "classifier-10.ckpt"),
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger.init_args.save_dir",
        str(out),
        *extra,
    ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _last(out, version: int) -> dict:
    return torch.load(out / "explainer" / f"version_{version}" / "checkpoints" / "last.ckpt", weights_only=True)


def _difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical(repo, tmp_path):
    write_classifier_checkpoint(tmp_path)
    whole = _train(repo, tmp_path, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    reference = _last(tmp_path / "whole", 0)
    assert reference["global_step"] == STEPS
    steps = sorted(random.Random(2026).sample([s for s in range(1, STEPS) if s != 6], 4)) + [6]  # and an epoch end
    report = []
    for kill in steps:
        out = tmp_path / f"killed_at_{kill}"
        killed = _train(
            repo, tmp_path, out, "--trainer.callbacks+=tests.helpers.KillAtStep", "--trainer.callbacks.step", str(kill)
        )
        assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL
        assert _last(out, 0)["global_step"] == kill
        resumed = _train(repo, tmp_path, out, "--ckpt_path", str(out / "explainer/version_0/checkpoints/last.ckpt"))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        final = _last(out, 1)
        weights = _difference(reference["state_dict"], final["state_dict"])
        report.append((kill, weights))
        assert final["global_step"] == STEPS
        assert weights == 0.0, f"killed at step {kill}: weights differ by {weights}"
        moments = [s for s in reference["optimizer_states"][0]["state"].values()]
        for a, b in zip(moments, final["optimizer_states"][0]["state"].values(), strict=True):
            assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
        best = [v for k, v in reference["callbacks"].items() if "RunCheckpoint" in k][0]
        best_resumed = [v for k, v in final["callbacks"].items() if "RunCheckpoint" in k][0]
        assert float(best_resumed["best_model_score"]) == float(best["best_model_score"])  # val/loss, the same
        assert "dirpath has changed" not in resumed.stderr
    print("kill step -> largest weight difference:", report)


def test_epoch_shuffle_resumes_after_the_completed_batches():
    done = {"n": 0}
    sampler = EpochShuffle(20, 4, seed=3, completed=lambda: done["n"])
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(full) == list(range(20)) and full == sampler.permutation(2)
    done["n"] = 3  # resumed after 3 batches of 4
    assert list(sampler) == full[12:]
    sampler.set_epoch(3)
    done["n"] = 0
    assert list(sampler) != full and sorted(sampler) == list(range(20))
    assert EpochShuffle(20, 4, seed=3).permutation(2) == full  # a pure function of (seed, epoch)


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random as python_random

    import numpy as np

    torch.manual_seed(1)
    np.random.seed(2)
    python_random.seed(3)
    states = rng_states()
    torch.save(states, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), python_random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    python_random.seed(9)
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and python_random.random() == expected[2]


def test_the_train_loader_outside_a_fit_yields_the_whole_epoch(tmp_path):
    import lightning.pytorch as pl

    from explainer.data.digits import DigitScenesDataModule
    from tests.helpers import tiny_net

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_net(10)

        def training_step(self, batch, batch_idx):
            return self.net(batch.image).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = DigitScenesDataModule(image_size=32, train_scenes=24, val_scenes=8, batch_size=8)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.fit_loop.epoch_loop.batch_progress.current.completed == 3
    assert sum(len(b) for b in dm.train_dataloader()) == 24  # after the fit: no batch skipped


def test_step_checkpoints_with_a_validation_monitor(repo, in_tmp, tiny_digits_args):
    from pathlib import Path

    from explainer.cli import make_cli

    # 32 training scenes in batches of 8: 4 steps, then one validation
    cli = make_cli(
        [
            "fit",
            "--config",
            str(repo / "configs/quickstart/classifier.yaml"),
            "--model.init_args.backbone",
            "tests.helpers:tiny_net",
            *tiny_digits_args,
            "--trainer.max_epochs",
            "1",
            "--checkpoint.every_n_train_steps",
            "1",
            "--checkpoint.save_last",
            "true",
        ]
    )
    checkpoint = cli.trainer.checkpoint_callback
    best = Path(checkpoint.best_model_path)
    assert best.name == "best-epoch=00-step=4.ckpt"  # written after the validation, not at a training step
    assert float(checkpoint.best_model_score) == float(cli.trainer.callback_metrics[checkpoint.monitor])  # fresh
    last = torch.load(best.parent / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert not list(best.parent.glob("*.partial"))  # written under a temporary name, then renamed


@pytest.mark.parametrize("save_last", ["true", "link"])
def test_last_checkpoint_is_written_before_any_validation(repo, in_tmp, tiny_digits_args, save_last):
    # a run killed before its first validation must still have something to resume from
    from pathlib import Path

    from explainer.cli import make_cli

    cli = make_cli(
        [
            "fit",
            "--config",
            str(repo / "configs/quickstart/classifier.yaml"),
            "--model.init_args.backbone",
            "tests.helpers:tiny_net",
            *tiny_digits_args,
            "--trainer.max_steps",
            "2",
            "--checkpoint.every_n_train_steps",
            "1",
            "--checkpoint.save_last",
            save_last,
        ]
    )
    checkpoint = cli.trainer.checkpoint_callback
    assert checkpoint.best_model_path == ""  # no validation ran: no best checkpoint, no stale score
    assert not Path(checkpoint.last_model_path).is_symlink()
    last = torch.load(Path(checkpoint.last_model_path), weights_only=True)
    assert last["global_step"] == 2 and "rng" in str(last["callbacks"])
