"""The README's commands, as written.

By default every command of every ``bash`` block is recognised and parsed (``train.py`` commands by the CLI
with ``--print_config``, ``evaluate.py`` commands by its parser and registries, ``make`` targets against the
Makefile), every Python block compiles, the links point at files and headings that exist, and the
"Explain your own classifier" Python blocks run (data shrunk). Marked slow: the train.py commands of that
section and of the folder-data recipe, and the evaluate.py commands, run with the data shrunk.
``make docs-check`` runs all of it."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import explainer
from tests.helpers import write_classifier_checkpoint

SECTION = "## Explain your own classifier"
SHRINK = [
    "--data.init_args.train_scenes",
    "32",
    "--data.init_args.val_scenes",
    "16",
    "--data.init_args.test_scenes",
    "16",
    "--trainer.max_epochs",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--model.init_args.mask_net_kwargs",
    '{"backbone": "digitnet", "width": 8}',
]


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
    train = _shrunk(
        train,
        "DigitScenesDataModule(image_size=64)",
        "DigitScenesDataModule(image_size=64, train_scenes=16, val_scenes=8, test_scenes=8, batch_size=8)",
    )
    train = _shrunk(
        train,
        "max_epochs=5",
        "max_epochs=1, mask_net_kwargs={'width': 4}, trainer={'enable_progress_bar': False, 'limit_train_batches': 1}",
    )
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
        errors = done.stderr[done.stderr.find("Errors:") :] if "Errors:" in done.stderr else done.stderr
        assert done.returncode == 0, errors[-3000:]
        folder = argv[argv.index("--trainer.callbacks.init_args.folder") + 1]
        model = explainer.load(folder)
        assert model.class_names == [str(i) for i in range(10)]


# -- every command ------------------------------------------------------------------------------------------
PLACEHOLDERS = {"<its best checkpoint>": "checkpoints/quickstart/classifier.ckpt", "<run id>": "run0"}


def readme_commands(repo: Path) -> list[str]:
    """Every command of the README's bash blocks: continuations joined, comments dropped, placeholders filled."""
    text = (repo / "README.md").read_text()
    commands = []
    for block in _blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                for placeholder, value in PLACEHOLDERS.items():
                    line = line.replace(placeholder, value)
                commands.append(line)
    return commands


def test_every_readme_command_is_known_and_parses(repo, capsys):
    from explainer.cli import make_cli
    from explainer.evaluation.cli import build_parser, data_spec
    from explainer.evaluation.plan import parse_layers, parse_methods
    from explainer.evaluation.suite import parse_metrics

    targets = set(re.findall(r"^([a-z-]+):", (repo / "Makefile").read_text(), flags=re.M))
    seen = set()
    for command in readme_commands(repo):
        argv = shlex.split(command)
        program = argv[0] if argv[0] != ".venv/bin/python" else argv[1]
        seen.add(program)
        if program == "make":
            assert argv[1] in targets, command
        elif program == "cp":
            continue
        elif program == "train.py":
            args = [str(repo / a) if a.startswith("configs/") else a for a in argv[2:]]
            with pytest.raises(SystemExit) as exit_info:
                make_cli([*args, "--print_config"])
            assert exit_info.value.code in (0, None), f"{command}\n{capsys.readouterr().err[-2000:]}"
            capsys.readouterr()
        elif program == "evaluate.py":
            args, rest = build_parser().parse_known_args(argv[2:])
            assert all(a.startswith("--trainer.") or not a.startswith("--") for a in rest), (command, rest)
            data_spec(str(repo / args.data), args.data_arg)
            parse_methods(args.methods, args.option)
            parse_layers(args.layer)
            if args.protocol is None:
                parse_metrics(args.metrics)
        elif program.startswith("benchmarks/"):
            assert (repo / program).is_file(), command
        else:
            raise AssertionError(f"the README runs {program!r}, which this test does not know: {command}")
    assert {"make", "train.py", "evaluate.py"} <= seen


def test_every_readme_python_block_compiles(repo):
    for number, block in enumerate(_blocks((repo / "README.md").read_text(), "python")):
        compile(block, f"README python block {number}", "exec")


def test_links_in_the_readme_and_docs_point_at_files_and_headings(repo):
    def anchors(path: Path) -> set[str]:
        headings = re.findall(r"^#+ (.*)$", path.read_text(), flags=re.M)
        return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}

    pages = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


# -- running them (slow) ------------------------------------------------------------------------------------
def _block_after(repo: Path, marker: str, language: str = "bash") -> str:
    text = (repo / "README.md").read_text()
    return _blocks(text[text.index(marker) :], language)[0]


def _run_train(repo: Path, command: str, shrink: list[str]) -> None:
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:3] == [".venv/bin/python", "train.py", "fit"], command
    argv = [
        sys.executable,
        str(repo / "train.py"),
        *[str(repo / a) if a.startswith("configs/") else a for a in argv[2:]],
    ]
    done = subprocess.run([*argv, *shrink], capture_output=True, text=True, timeout=900)
    errors = done.stderr[done.stderr.find("Errors:") :] if "Errors:" in done.stderr else done.stderr
    assert done.returncode == 0, errors[-3000:]


@pytest.mark.slow
def test_the_folder_recipe_runs(repo, in_tmp):
    from explainer.data.digits import DigitScenes

    for split, count in (("train", 24), ("val", 8), ("test", 8)):
        DigitScenes(split=split, num_scenes=count, image_size=32).save(in_tmp / "data" / "mine" / split)
    block = _block_after(repo, "The same\ntwo stages on a folder of images")
    classifier_cmd, explainer_cmd = [c for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    shrink = [
        "--data.init_args.image_size",
        "32",
        "--data.init_args.num_workers",
        "0",
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]
    _run_train(repo, classifier_cmd, shrink)
    best = sorted((in_tmp / "runs" / "classifier").glob("*/checkpoints/best-*.ckpt"))
    assert len(best) == 1
    _run_train(
        repo,
        explainer_cmd.replace("<its best checkpoint>", str(best[0])),
        [*shrink, "--model.init_args.mask_net_kwargs", '{"backbone": "digitnet", "width": 8}'],
    )
    model = explainer.load("checkpoints/mine")
    assert model.class_names == [str(i) for i in range(10)]


@pytest.mark.slow
def test_the_evaluate_commands_run(repo, quickstart_classifier, monkeypatch):
    import numpy as np
    import torch

    from explainer.evaluation.cli import main
    from explainer.export import export_explainer
    from explainer.modules import ExplainerModule
    from explainer.protocols import grid

    torch.manual_seed(0)
    module = ExplainerModule(str(quickstart_classifier), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2})
    export_explainer(module, "checkpoints/quickstart/explainer")

    def every_image_is_confident(dataset, classifier, **kwargs):  # an untrained classifier is rarely right
        labels = torch.stack([dataset[i].labels for i in range(len(dataset))]).argmax(1).numpy()
        return np.arange(len(labels)), labels, np.ones(len(labels), np.float32)

    monkeypatch.setattr(grid, "score_source", every_image_is_confident)
    natural = [c for c in readme_commands(repo) if "evaluate.py" in c and "--protocol" not in c]
    grids = [c for c in readme_commands(repo) if "evaluate.py" in c and "--protocol" in c]
    assert len(natural) == 1 and len(grids) == 1
    shrink = {
        "--limit 200": "--limit 8",
        "--limit 64": "--limit 4",
        "rise.num_masks=4000": "rise.num_masks=20",
        "rise.num_masks=1000": "rise.num_masks=20",
    }
    for command in (*natural, *grids):
        for old, new in shrink.items():
            command = command.replace(old, new)
        argv = [str(repo / a) if a.startswith("configs/") else a for a in shlex.split(command)[2:]]
        argv += ["--data-arg", "test_scenes=40", "--trainer.enable_progress_bar", "false"]
        argv += ["--option", "bbmp.iterations=3"] if ",bbmp," in command else []
        rows = main(argv)
        out = Path(argv[argv.index("--out") + 1])
        assert rows and (out / "results.json").is_file() and (out / "results.md").is_file()
        methods = {r["method"].split("@")[0] for r in rows}
        assert "explainer" in methods and "uniform" in methods
