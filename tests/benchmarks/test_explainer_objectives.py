"""``benchmarks/explainer_objectives.py`` runs end to end on a tiny budget (slow: it trains three models)."""

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
    try:
        spec.loader.exec_module(bench)
        _, classifier = write_classifier_checkpoint(in_tmp, backbone="digitnet")
        out = in_tmp / "objectives.json"
        result = bench.main(["--fast", "--classifier", str(classifier), "--variants", "paper", "+all three",
                             "--work", str(in_tmp / "work"), "--out", str(out)])  # fmt: skip
    finally:
        sys.modules.pop(spec.name, None)
    assert json.loads(out.read_text())["variants"].keys() == {"paper", "+all three"}
    for variant in result["variants"].values():
        scores = variant["scores"]
        assert {"pointing_game.accuracy", "class_specificity.other_present_mask", "encoding.gap"} <= set(scores)
    assert result["variants"]["+all three"]["extra_losses"]["class_preservation"] == 1.0
