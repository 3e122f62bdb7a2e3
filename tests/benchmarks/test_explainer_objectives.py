"""``benchmarks/explainer_objectives.py`` end to end on a tiny budget (slow: trains small models)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "explainer_objectives.py"


@pytest.mark.slow
def test_the_ablation_trains_scores_and_writes_every_variant(in_tmp):
    from tests.helpers import write_classifier_checkpoint

    spec = importlib.util.spec_from_file_location("explainer_objectives", _PATH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    recommended = "+both class terms +clipped"
    try:
        spec.loader.exec_module(bench)
        _, classifier = write_classifier_checkpoint(in_tmp, backbone="digitnet")
        out = in_tmp / "objectives.json"
        # no grids: an untrained classifier has no confidently classified cells to build them from (the grid
        # scores and the DiFull fine-tune ran in the measured benchmark, docs/objectives.md)
        common = ["--fast", "--grids", "0", "--classifier", str(classifier), "--work", str(in_tmp / "work"),
                  "--out", str(out)]  # fmt: skip
        bench.main([*common, "--variants", "paper", recommended])
        result = bench.main([*common, "--variants", recommended, "--seeds", "1"])  # merged into the same file
        with pytest.raises(SystemExit, match="another budget"):
            bench.main([*common, "--variants", "paper", "--classifier", "another.ckpt"])
    finally:
        sys.modules.pop(spec.name, None)
    written = json.loads(out.read_text())["variants"]
    assert written.keys() == {"paper", recommended} and set(written[recommended]["seeds"]) == {"0", "1"}
    for variant in result.values():
        for run in variant["seeds"].values():
            scores = run["scores"]
            assert {"pointing_game.accuracy", "class_specificity.other_present_mask", "encoding.gap"} <= set(scores)
            assert not {"gridpg.mean", "difull.mean"} & set(scores)
    assert result[recommended]["options"]["output"] == "clipped"
    table = out.with_suffix(".md").read_text()
    assert "| paper | 1 |" in table and f"| {recommended} | 2 |" in table and "other / own" in table
    summary = bench.summarise(result[recommended]["seeds"])
    assert summary["pointing_game.accuracy"][2] == 2  # the mean over both seeds
