"""The README's "Explain your own classifier" section runs as written: its Python blocks (data shrunk, fewer
epochs) and its train.py commands (shrunk the same way), on a digitnet classifier saved as ``train.py``
would."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

import explainer
from tests.helpers import write_classifier_checkpoint

SECTION = "## Explain your own classifier"
SHRINK = ["--data.init_args.train_scenes", "32", "--data.init_args.val_scenes", "16", "--data.init_args.test_scenes",
          "16", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
          "--model.init_args.mask_net_kwargs", '{"backbone": "digitnet", "width": 8}']


def _section(repo) -> str:
    text = (repo / "README.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def _shrunk(code: str, old: str, new: str) -> str:
    assert old in code, f"the README block no longer contains {old!r}; update this test with it"
    return code.replace(old, new)


@pytest.fixture
def quickstart_classifier(in_tmp):
    folder = in_tmp / "checkpoints" / "quickstart"
    folder.mkdir(parents=True)
    _, path = write_classifier_checkpoint(folder, backbone="digitnet")
    path.rename(folder / "classifier.ckpt")
    return folder / "classifier.ckpt"


def test_the_python_blocks_run(repo, quickstart_classifier):
    convert, train = _blocks(_section(repo), "python")
    exec(compile(convert, "README: convert", "exec"), {})
    for name in ("digitnet.pt", "digitnet.ts", "digitnet.pt2"):
        assert (quickstart_classifier.parent.parent.parent / name).is_file()
    train = _shrunk(train, "DigitScenesDataModule(image_size=64)",
                    "DigitScenesDataModule(image_size=64, train_scenes=16, val_scenes=8, test_scenes=8, batch_size=8)")
    train = _shrunk(train, "max_epochs=5", "max_epochs=1, mask_net_kwargs={'width': 4}, "
                    "trainer={'enable_progress_bar': False, 'limit_train_batches': 1}")
    scope: dict = {}
    exec(compile(train, "README: explainer.fit", "exec"), scope)
    assert tuple(scope["masks"].shape) == (8, 10, 64, 64)
    assert explainer.load("checkpoints/mine").class_names == [str(i) for i in range(10)]


@pytest.mark.slow
def test_the_train_commands_run(repo, quickstart_classifier):
    section = _section(repo)
    exec(compile(_blocks(section, "python")[0], "README: convert", "exec"), {})
    commands = [c for c in _blocks(section, "bash")[0].replace("\\\n", " ").splitlines() if c.strip()]
    assert len(commands) == 3
    for command in commands:
        argv = shlex.split(command)
        assert argv[:3] == [".venv/bin/python", "train.py", "fit"]
        argv = [sys.executable, str(repo / "train.py"), *argv[2:]]
        argv = [str(repo / a) if a.startswith("configs/") else a for a in argv]
        done = subprocess.run([*argv, *SHRINK], capture_output=True, text=True, timeout=600)
        errors = done.stderr[done.stderr.find("Errors:"):] if "Errors:" in done.stderr else done.stderr
        assert done.returncode == 0, errors[-3000:]
        folder = argv[argv.index("--trainer.callbacks.init_args.folder") + 1]
        model = explainer.load(folder)
        assert model.class_names == [str(i) for i in range(10)]
