"""Every YAML file under configs/ parses with the CLI (composed with a data or model config if partial, and an
overlay with the Explainer config it refines)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from explainer.cli import make_cli

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_the_documented_configs_exist():
    """The configs the README and the docs name are all found (and so parsed below)."""
    names = {str(p.relative_to(REPO / "configs")) for p in CONFIGS}
    presets = {
        f"experiment/{net}_{data}{stage}.yaml"
        for net in ("vgg16", "resnet50")
        for data in ("voc", "coco")
        for stage in ("", "_classifier")
    }
    quickstart = {
        f"quickstart/{name}.yaml"
        for name in (
            "classifier",
            "classifier_parts",
            "explainer",
            "explainer_difull",
            "explainer_gridpg",
            "evaluator",
            "finetune",
            "prototypes",
            "rtsal",
            "surrogate",
            "fastshap",
            "infiller",
        )
    }
    data = {f"data/{name}.yaml" for name in ("voc2007", "coco2014", "cub", "folder", "digits", "digits_single")}
    assert presets | quickstart | data <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_parses(path, capsys):
    content = yaml.safe_load(path.read_text()) or {}
    args = ["fit"]
    if "class_path" not in (content.get("model") or {"class_path": None}):
        # an overlay (e.g. quickstart/finetune.yaml): it goes on top of the Explainer config it refines
        args += ["--config", str(REPO / "configs/quickstart/explainer.yaml")]
    elif "model" not in content:
        args += ["--config", str(REPO / "configs/model/classifier.yaml")]
    if "data" not in content:
        args += ["--config", str(REPO / "configs/data/digits.yaml")]
    args += ["--config", str(path), "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        make_cli(args)
    assert exit_info.value.code in (0, None), capsys.readouterr().err[-2000:]
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "class_path" in printed["model"] and "class_path" in printed["data"]
