"""evaluate.py: every method by every metric, the files it writes, --resume, streaming and bad input."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch

from explainer.callbacks import ExplainerMetrics
from explainer.classifiers import FrozenClassifier
from explainer.data.digits import DigitScenesDataModule
from explainer.evaluation import AttributionEvaluation, EvaluationSettings, ShardedBatches, parse_metrics
from explainer.evaluation.cli import main
from explainer.evaluation.plan import parse_methods
from explainer.export import export_explainer
from explainer.methods import AttributionMethod, build_method
from explainer.modules import ExplainerModule
from tests.helpers import write_classifier_checkpoint

DATA_ARGS = ["--data-arg", "image_size=32", "--data-arg", "test_scenes=12", "--data-arg", "batch_size=6"]
QUIET = ["--trainer.enable_progress_bar", "false"]


def _trainer(tmp_path, **kw) -> pl.Trainer:
    return pl.Trainer(
        **{
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "inference_mode": False,
            "use_distributed_sampler": False,
            "default_root_dir": str(tmp_path),
            **kw,
        }
    )


@pytest.fixture
def setup(tmp_path, repo):
    _, ckpt = write_classifier_checkpoint(tmp_path)
    module = ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2})
    export = export_explainer(module, tmp_path / "explainer")
    return ckpt, export, repo / "configs/data/digits.yaml"


def test_every_method_by_every_metric_and_resume(setup, tmp_path):
    ckpt, export, data = setup
    out = tmp_path / "results"
    args = [
        "--data",
        str(data),
        *DATA_ARGS,
        "--classifier",
        str(ckpt),
        "--out",
        str(out),
        *QUIET,
        "--metrics",
        "all",
        "--insertion-step",
        "64",
        "--methods",
        f"explainer={export},centre,uniform,gradcam",
    ]
    rows = main(args)
    methods = {r["method"] for r in rows}
    assert methods == {"explainer", "centre", "uniform", "gradcam"}
    metrics = {r["metric"] for r in rows if r["method"] == "explainer"}
    for key in (
        "pointing_game.accuracy",
        "segmentation.c_iou",
        "box_iou.c_iou",
        "saliency.saliency",
        "insertion_deletion.insertion",
        "insertion_deletion.deletion",
        "class_specificity.own_mask",
        "energy_pointing_game.energy",
        "seconds_per_image",
    ):
        assert key in metrics
    assert all(set(r) == {"method", "metric", "value", "n", "stderr", "targets"} for r in rows)
    assert all(r["targets"] == "labels" for r in rows)
    assert [r["n"] for r in rows if r["metric"] == "seconds_per_image"] == [12] * 4
    assert json.loads((out / "results.json").read_text()) == rows
    settings = json.loads((out / "settings.json").read_text())
    assert settings["tie_order"] == "rise" and settings["saliency_mode"] == "paper"
    assert settings["difficult"] == "coverage rule"
    table = (out / "results.md").read_text()
    assert "| explainer |" in table and "| gradcam |" in table and "saliency_mode: paper" in table
    assert (out / "examples.png").is_file() and (out / "curves.png").is_file()
    value = {(r["method"], r["metric"]): r["value"] for r in rows}
    # a constant map has no maximum to point with: every pair is a miss and counted invalid
    assert value[("uniform", "pointing_game.accuracy")] == 0.0
    pairs = {r["metric"]: r["n"] for r in rows if r["method"] == "uniform"}["pointing_game.hit_rate"]
    assert value[("uniform", "pointing_game.invalid")] == pairs >= 12
    # the default logger (CSV here, wandb offline outside the tests) got every row
    logged = (out / "logs" / "version_0" / "metrics.csv").read_text()
    assert "eval/gradcam/pointing_game.accuracy" in logged
    with pytest.raises(FileExistsError, match="--resume"):
        main(args)
    before = (out / "results.json").read_text()
    rows2 = main([*args[:-1], f"explainer={export},centre,uniform,gradcam,gradient", "--resume"])
    assert {r["method"] for r in rows2} == methods | {"gradient"}
    assert [r for r in rows2 if r["method"] != "gradient"] == json.loads(before)


def test_resume_refuses_other_settings_and_a_truncated_file(setup, tmp_path):
    ckpt, _, data = setup
    out = tmp_path / "results"
    args = [
        "--data",
        str(data),
        *DATA_ARGS,
        "--classifier",
        str(ckpt),
        "--out",
        str(out),
        *QUIET,
        "--metrics",
        "pointing_game",
        "--methods",
        "centre",
    ]
    main(args)
    with pytest.raises(FileExistsError, match="other settings.*limit"):
        main([*args, "--methods", "centre,uniform", "--resume", "--limit", "6"])
    with pytest.raises(FileExistsError, match="other settings.*targets"):
        main([*args, "--resume", "--targets", "predictions"])
    with pytest.raises(FileExistsError, match="other settings.*seed"):
        main([*args, "--resume", "--seed", "5"])
    with pytest.raises(FileExistsError, match="other settings.*data"):
        main([*args, "--resume", "--data-arg", "min_digits=2"])
    (tmp_path / "other").mkdir()
    _, other = write_classifier_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(FileExistsError, match="other settings.*classifier"):
        main([*[a if a != str(ckpt) else str(other) for a in args], "--resume"])
    rows = main([*args, "--limit", "6", "--overwrite"])  # --overwrite starts afresh under the new settings
    assert json.loads((out / "settings.json").read_text())["limit"] == 6
    assert [r["n"] for r in rows if r["metric"] == "seconds_per_image"] == [6]
    (out / "results.json").write_text((out / "results.json").read_text()[:40])  # a killed plain write
    with pytest.raises(ValueError, match="results.json is not valid JSON"):
        main([*args, "--limit", "6", "--resume"])


class _Broken(AttributionMethod):
    """Fails on its second batch, as a run stopped in the middle of a method."""

    name = "broken"
    calls = 0

    def attribute(self, images, classes, **kwargs):
        _Broken.calls += 1
        if _Broken.calls == 2:
            raise RuntimeError("stopped in the middle")
        return torch.rand(*classes.shape, *images.shape[-2:])


def test_a_run_stopped_in_a_method_keeps_the_finished_methods(setup, tmp_path, monkeypatch):
    from explainer.methods import base

    ckpt, _, data = setup
    monkeypatch.setitem(base.METHODS._entries, "broken", _Broken)  # registered for this test only
    out = tmp_path / "results"
    args = [
        "--data",
        str(data),
        *DATA_ARGS,
        "--classifier",
        str(ckpt),
        "--out",
        str(out),
        *QUIET,
        "--metrics",
        "pointing_game",
        "--methods",
        "centre,broken,uniform",
    ]
    with pytest.raises(RuntimeError, match="stopped in the middle"):
        main(args)
    kept = json.loads((out / "results.json").read_text())
    assert "centre" in {r["method"] for r in kept}
    rows = main([*args, "--resume"])
    assert {r["method"] for r in rows} >= {"centre", "uniform"}
    assert [r for r in rows if r["method"] == "centre"] == [r for r in kept if r["method"] == "centre"]


def test_unknown_method_metric_and_bad_data_list_the_valid_ones(setup, tmp_path):
    ckpt, _, data = setup
    with pytest.raises(ValueError, match="valid methods:.*rise"):
        parse_methods("rise,nonsense", [])
    with pytest.raises(ValueError, match="valid metrics: all, pointing_game"):
        parse_metrics("pointing_game,accuracy_of_vibes")
    with pytest.raises(ValueError, match="<method>.<option>"):
        parse_methods("rise", ["gradcam.layer=x"])
    assert parse_methods("rise", ["rise.num_masks=100"]) == {"rise": {"num_masks": 100}}
    base = ["--data", str(data), "--classifier", str(ckpt), "--out", str(tmp_path / "x"), "--methods", "centre"]
    with pytest.raises(SystemExit):
        main([*base[:-1], "nonsense"])
    with pytest.raises(ValueError, match="--trainer"):
        main([*base, "--not-an-option", "1"])
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text("data:\n  class_path: subprocess.run\n  init_args: {args: 'touch pwned', shell: true}\n")
    with pytest.raises((SystemExit, ValueError)):
        main([*base[:2], "--data", str(hostile), *base[4:]])
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "x" / "results.json").exists()


class _NaNMethod(AttributionMethod):
    def attribute(self, images, classes, **kwargs):
        maps = torch.rand(*classes.shape, *images.shape[-2:])
        maps[0] = float("nan")  # the first image's maps are broken
        maps[1] = 0.5  # the second image's maps are constant
        return maps


def test_nan_and_constant_maps_are_counted_not_fatal(setup, tmp_path):
    ckpt, _, _ = setup
    classifier = FrozenClassifier.from_checkpoint(ckpt)
    dm = DigitScenesDataModule(image_size=32, test_scenes=6, batch_size=6)
    settings = EvaluationSettings(
        metrics=["pointing_game", "insertion_deletion", "segmentation", "saliency"], insertion_step=64
    )
    module = AttributionEvaluation("nan", _NaNMethod(), classifier, dm, settings)
    _trainer(tmp_path).test(module, verbose=False)
    value = {r["metric"]: r["value"] for r in module.rows}
    first = next(iter(dm.test_dataloader()))
    nan_pairs, constant_pairs = int((first.labels[0] > 0).sum()), int((first.labels[1] > 0).sum())
    assert value["pointing_game.invalid"] == nan_pairs + constant_pairs  # a constant map has no point
    assert value["insertion_deletion.invalid"] == nan_pairs + constant_pairs  # nor a ranking
    assert value["segmentation.invalid"] == nan_pairs  # a constant mask is a valid mask
    assert value["saliency.invalid"] == 1  # one merged mask per image (the paper's mode)
    assert all(r["value"] == r["value"] for r in module.rows)  # no NaN values


def test_batches_are_dealt_round_robin_without_padding():
    assert list(ShardedBatches(10, 4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    shards = [list(ShardedBatches(10, 4, rank, 2)) for rank in range(2)]
    assert shards == [[[0, 1, 2, 3], [8, 9]], [[4, 5, 6, 7]]]
    assert [len(ShardedBatches(10, 4, rank, 4)) for rank in range(4)] == [1, 1, 1, 0]
    every = sorted(i for rank in range(3) for b in ShardedBatches(11, 2, rank, 3) for i in b)
    assert every == list(range(11))  # every image exactly once


def test_limit_truncates_the_streamed_test_split(tmp_path):
    dm = DigitScenesDataModule(image_size=32, test_scenes=10, batch_size=4)
    module = AttributionEvaluation(
        "centre", build_method("centre"), None, dm, EvaluationSettings(metrics=["box_iou"], limit=7)
    )
    _trainer(tmp_path).test(module, verbose=False)
    loader = module.test_dataloader()
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 3]
    assert len(batches[1].boxes) == 3 and batches[1].masks.shape[0] == 3
    assert [r["n"] for r in module.rows if r["metric"] == "seconds_per_image"] == [7]


def test_validation_callback_and_evaluation_report_equal_values(setup, tmp_path):
    ckpt, _, _ = setup
    torch.manual_seed(0)
    module = ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2})
    with torch.no_grad():  # masks that are not all alike
        for p in module.mask_net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    dm = DigitScenesDataModule(image_size=32, test_scenes=12, batch_size=6)
    trainer = _trainer(tmp_path, callbacks=[ExplainerMetrics()])
    trainer.test(module, datamodule=dm, verbose=False)
    logged = {k.removeprefix("test/labels/"): float(v) for k, v in trainer.logged_metrics.items()}
    export = export_explainer(module, tmp_path / "export")
    names = list(ExplainerMetrics.VALIDATION_METRICS)
    evaluation = AttributionEvaluation(
        "explainer",
        build_method("explainer", path=str(export)),
        module.classifier,
        dm,
        EvaluationSettings(metrics=names),
    )
    _trainer(tmp_path).test(evaluation, verbose=False)
    rows = {r["metric"]: r["value"] for r in evaluation.rows}
    shared = [k for k in rows if k in logged]
    assert {"pointing_game.accuracy", "segmentation.c_iou", "box_iou.c_iou", "saliency.saliency"} <= set(shared)
    for key in shared:
        assert rows[key] == pytest.approx(logged[key], abs=1e-5), key


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


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_metrics_take_probabilities_as_the_classifier_does(activation):
    """A single-label (softmax) classifier is scored with softmax probabilities by every metric that queries it."""
    from explainer.classifiers.source import OutputAdapter
    from explainer.evaluation.suite import SuiteContext, build_suite
    from tests.helpers import tiny_net

    frozen = FrozenClassifier(tiny_net(num_classes=4), reference="tiny", adapter=OutputAdapter(activation=activation))
    context = SuiteContext(frozen, 4, "boxes", EvaluationSettings(saliency_mode="pairs"))
    suite = build_suite(["saliency", "insertion_deletion", "class_specificity"], context, has_boxes=True)
    assert {name: metric.activation for name, metric in suite.items()} == dict.fromkeys(suite, activation)
    assert len(suite) == 3


def test_evaluate_takes_every_route_to_the_same_classifier(tmp_path, repo):
    """The same digitnet as a checkpoint, as digitnet + a state dict and as TorchScript: equal rows."""
    _, ckpt = write_classifier_checkpoint(tmp_path, backbone="digitnet")
    net = FrozenClassifier.from_checkpoint(ckpt, num_classes=10).net
    torch.save(net.state_dict(), tmp_path / "digitnet.pt")
    torch.jit.save(torch.jit.trace(net, torch.randn(1, 3, 32, 32)), tmp_path / "digitnet.ts")
    routes = {
        "checkpoint": ["--classifier", str(ckpt)],
        "state dict": ["--classifier", "digitnet", "--classifier-option", f"weights={tmp_path / 'digitnet.pt'}"],
        "torchscript": ["--classifier", str(tmp_path / "digitnet.ts")],
    }
    values = {}
    for name, classifier in routes.items():
        rows = main(
            [
                "--data",
                str(repo / "configs/data/digits.yaml"),
                *DATA_ARGS,
                *classifier,
                *QUIET,
                "--out",
                str(tmp_path / name.replace(" ", "_")),
                "--methods",
                "gradient,centre",
                "--metrics",
                "pointing_game,saliency,insertion_deletion",
                "--insertion-step",
                "64",
            ]
        )
        values[name] = {(r["method"], r["metric"]): r["value"] for r in rows if r["metric"] != "seconds_per_image"}
    assert len(values["checkpoint"]) >= 8
    for name in ("state dict", "torchscript"):
        assert values[name].keys() == values["checkpoint"].keys()
        for key, value in values["checkpoint"].items():
            assert value == pytest.approx(values[name][key], abs=1e-5, nan_ok=True), (name, key)
