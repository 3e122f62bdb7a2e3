"""evaluate.py: every method by every metric, the files it writes, --resume and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from explainer.evaluate_cli import main, parse_methods
from explainer.evaluation import EvaluationSettings, collect_batches, evaluate_method, parse_metrics
from explainer.export import export_explainer
from explainer.methods import AttributionMethod, build_method
from explainer.modules import ExplainerModule
from tests.helpers import write_classifier_checkpoint

DATA_ARGS = ["--data-arg", "image_size=32", "--data-arg", "test_scenes=12", "--data-arg", "batch_size=6"]


@pytest.fixture
def setup(tmp_path, repo):
    _, ckpt = write_classifier_checkpoint(tmp_path)
    module = ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2})
    export = export_explainer(module, tmp_path / "explainer")
    return ckpt, export, repo / "configs/data/digits.yaml"


def test_every_method_by_every_metric_and_resume(setup, tmp_path):
    ckpt, export, data = setup
    out = tmp_path / "results"
    args = ["--data", str(data), *DATA_ARGS, "--classifier", str(ckpt), "--out", str(out),
            "--methods", f"explainer={export},centre,uniform,gradcam", "--metrics", "all", "--insertion-step", "64"]
    rows = main(args)
    methods = {r["method"] for r in rows}
    assert methods == {"explainer", "centre", "uniform", "gradcam"}
    metrics = {r["metric"] for r in rows if r["method"] == "explainer"}
    for key in ("pointing_game.accuracy", "segmentation.c_iou", "box_iou.c_iou", "saliency.saliency",
                "insertion_deletion.insertion", "insertion_deletion.deletion", "class_specificity.own_mask",
                "energy_pointing_game.energy", "seconds_per_image"):
        assert key in metrics
    assert all(set(r) == {"method", "metric", "value", "n", "stderr", "targets"} for r in rows)
    assert all(r["targets"] == "labels" for r in rows)
    assert json.loads((out / "results.json").read_text()) == rows
    table = (out / "results.md").read_text()
    assert "| explainer |" in table and "| gradcam |" in table
    assert (out / "examples.png").is_file() and (out / "curves.png").is_file()
    # a uniform map hits only by chance, the oracle-like centre is not perfect: values are sane probabilities
    value = {(r["method"], r["metric"]): r["value"] for r in rows}
    assert 0 <= value[("uniform", "pointing_game.accuracy")] <= 1
    with pytest.raises(FileExistsError):
        main(args)
    before = (out / "results.json").read_text()
    rows2 = main([*args[:-6], "--methods", f"explainer={export},centre,uniform,gradcam,gradient", "--metrics",
                  "all", "--insertion-step", "64", "--resume"])
    assert {r["method"] for r in rows2} == methods | {"gradient"}
    kept = [r for r in rows2 if r["method"] != "gradient"]
    assert kept == json.loads(before)


def test_unknown_method_and_metric_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid methods:.*rise"):
        parse_methods("rise,nonsense", [])
    with pytest.raises(ValueError, match="valid metrics: all, pointing_game"):
        parse_metrics("pointing_game,accuracy_of_vibes")
    with pytest.raises(ValueError, match="<method>.<option>"):
        parse_methods("rise", ["gradcam.layer=x"])
    assert parse_methods("rise", ["rise.num_masks=100"]) == {"rise": {"num_masks": 100}}


class _NaNMethod(AttributionMethod):
    def attribute(self, images, classes, **kwargs):
        maps = torch.rand(*classes.shape, *images.shape[-2:])
        maps[0] = float("nan")  # the first image's maps are broken
        maps[1] = 0.5  # the second image's maps are constant
        return maps


def test_nan_and_constant_maps_are_counted_not_fatal(setup):
    ckpt, _, _ = setup
    from explainer.classifiers import FrozenClassifier
    from explainer.data.digits import DigitScenesDataModule

    classifier = FrozenClassifier.from_checkpoint(ckpt)
    dm = DigitScenesDataModule(image_size=32, test_scenes=6, batch_size=6)
    batches = collect_batches(dm, None, torch.device("cpu"))
    settings = EvaluationSettings(metrics=["pointing_game", "insertion_deletion"], insertion_step=64)
    rows, _ = evaluate_method("nan", _NaNMethod(), batches, classifier, 10, settings)
    value = {r["metric"]: r["value"] for r in rows}
    pairs = int((batches[0].labels[:2] > 0).sum())
    assert value["pointing_game.invalid"] >= pairs
    assert value["insertion_deletion.invalid"] >= pairs
    assert all(r["value"] == r["value"] for r in rows if not r["metric"].endswith("stderr"))  # no NaN values


def test_limit_truncates_the_test_split():
    from explainer.data.digits import DigitScenesDataModule

    dm = DigitScenesDataModule(image_size=32, test_scenes=10, batch_size=4)
    batches = collect_batches(dm, 7, torch.device("cpu"))
    assert [len(b) for b in batches] == [4, 3]
    assert len(batches[1].boxes) == 3 and batches[1].masks.shape[0] == 3


def test_explainer_method_from_export_equals_the_module(setup):
    ckpt, export, _ = setup
    method = build_method("explainer", path=str(export))
    module = ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2})
    module.mask_net.load_state_dict(method.model.net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    classes = torch.tensor([[3, -1], [0, 9]])
    maps = method(x, classes)
    expected = torch.sigmoid(module.eval()(x))
    torch.testing.assert_close(maps[0, 0], expected[0, 3])
    assert maps[0, 1].abs().sum() == 0
    torch.testing.assert_close(maps[1, 1], expected[1, 9])
