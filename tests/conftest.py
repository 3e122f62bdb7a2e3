"""Shared fixtures. Tests never touch the network or the home directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# before any import of wandb / matplotlib / torch.hub: keep every cache and config in a temporary folder
_SANDBOX = Path(tempfile.mkdtemp(prefix="explainer-tests-"))
for var, sub in [
    ("WANDB_DIR", "wandb"),
    ("WANDB_CACHE_DIR", "wandb-cache"),
    ("WANDB_CONFIG_DIR", "wandb-config"),
    ("WANDB_DATA_DIR", "wandb-data"),
    ("MPLCONFIGDIR", "mpl"),
    ("TORCH_HOME", "torch"),
    ("XDG_CACHE_HOME", "cache"),
]:
    os.environ[var] = str(_SANDBOX / sub)
os.environ["WANDB_MODE"] = "disabled"  # CSV logging by default; the wandb test switches to offline
os.environ["WANDB_SILENT"] = "true"
# the test classifiers are user factories (package.module:factory); checkpoints that name them may be loaded
# (subprocesses inherit the allowance; the tests of hostile files remove it)
os.environ["EXPLAINER_ALLOW_FACTORIES"] = ",".join(
    [
        "tests.helpers:tiny_net",
        "tests.helpers:opaque_net",
        "tests.modules.test_prototypes:mlp_head_net",
        "tests.modules.test_prototypes:signed_features_net",
    ]
)

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs the test inside ``tmp_path`` (so ``runs/`` and ``checkpoints/`` land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_digits_args() -> list[str]:
    """CLI overrides that shrink digit scenes to a few tiny batches."""
    return [
        "--data.init_args.image_size",
        "32",
        "--data.init_args.train_scenes",
        "32",
        "--data.init_args.val_scenes",
        "16",
        "--data.init_args.test_scenes",
        "16",
        "--data.init_args.batch_size",
        "8",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
