"""``benchmarks/explainer_objectives.py`` end to end on a tiny budget (slow: trains a classifier and small models)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "explainer_objectives.py"


@pytest.mark.slow
def test_the_ablation_trains_scores_and_writes_every_variant(in_tmp):
    from explainer.cli import make_cli

    spec = importlib.util.spec_from_file_location("explainer_objectives", _PATH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    recommended = "+both class terms +clipped"
    try:
        spec.loader.exec_module(bench)
        # a briefly trained classifier: the grids need single-digit scenes it classifies correctly (p >= 0.5),
        # which a short run on single-digit scenes gives
        cli = make_cli(
            ["fit", "--config", str(_PATH.parents[1] / "configs/quickstart/classifier.yaml"),
             "--data.init_args.train_scenes", "4000", "--data.init_args.min_digits", "1",
             "--data.init_args.max_digits", "1", "--trainer.max_epochs", "3", "--trainer.logger", "false",
             "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(in_tmp / "classifier")]
        )  # fmt: skip
        classifier = cli.trainer.checkpoint_callback.best_model_path
        out = in_tmp / "objectives.json"
        common = ["--fast", "--classifier", str(classifier), "--work", str(in_tmp / "work"), "--out", str(out)]
        bench.main([*common, "--variants", "paper", recommended])
        result = bench.main([*common, "--variants", recommended, "--seeds", "1"])  # merged into the same file
        with pytest.raises(SystemExit, match="another budget"):
            bench.main([*common, "--variants", "paper", "--test", "9"])
    finally:
        sys.modules.pop(spec.name, None)
    written = json.loads(out.read_text())["variants"]
    assert written.keys() == {"paper", recommended} and set(written[recommended]["seeds"]) == {"0", "1"}
    for variant in result.values():
        for run in variant["seeds"].values():
            scores = run["scores"]
            assert {"pointing_game.accuracy", "class_specificity.other_present_mask", "encoding.gap"} <= set(scores)
            assert {"gridpg.mean", "difull.mean"} <= set(scores)
    assert result[recommended]["options"]["output"] == "clipped"
    table = out.with_suffix(".md").read_text()
    assert "| paper | 1 |" in table and f"| {recommended} | 2 |" in table and "other / own" in table
    summary = bench.summarise(result[recommended]["seeds"])
    assert summary["gridpg.mean"][2] == 2  # the mean over both seeds
