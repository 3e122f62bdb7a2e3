"""evaluate.py --devices: N CPU processes give the rows of one process; uneven shards; --resume; bad specs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from explainer import distributed_eval
from explainer.distributed_eval import parse_devices
from explainer.evaluate_cli import main
from tests.helpers import write_classifier_checkpoint

METHODS = ["--metrics", "pointing_game,segmentation,insertion_deletion", "--insertion-step", "64"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return write_classifier_checkpoint(tmp_path_factory.mktemp("classifier"))[1]


def _args(repo, ckpt, out, scenes: int, methods: str, *extra: str) -> list[str]:
    return ["--data", str(repo / "configs/data/digits.yaml"), "--data-arg", "image_size=32",
            "--data-arg", f"test_scenes={scenes}", "--data-arg", "batch_size=4", "--classifier", str(ckpt),
            "--out", str(out), "--methods", methods, *METHODS, *extra]


def _assert_same_rows(single: list[dict], multi: list[dict]) -> None:
    assert [(r["method"], r["metric"]) for r in multi] == [(r["method"], r["metric"]) for r in single]
    for one, many in zip(single, multi, strict=True):
        where = f"{one['method']} {one['metric']}"
        assert many["n"] == one["n"], where
        assert many["targets"] == one["targets"]
        if one["metric"] == "seconds_per_image":  # a timing: only its image count can agree
            continue
        assert math.isclose(many["value"], one["value"], rel_tol=0, abs_tol=1e-5), where
        if one["stderr"] is None or math.isnan(one["stderr"]):
            assert many["stderr"] is None or math.isnan(many["stderr"]), where
        else:
            assert math.isclose(many["stderr"], one["stderr"], rel_tol=0, abs_tol=1e-5), where


def _no_spawn(*args, **kwargs):
    raise AssertionError("one device must not spawn processes")


@pytest.fixture
def started(monkeypatch) -> list[int]:
    """The number of worker processes of every start (the real start, observed)."""
    counts: list[int] = []
    real = distributed_eval.mp.start_processes

    def spy(*args, **kwargs):
        counts.append(kwargs["nprocs"])
        return real(*args, **kwargs)

    monkeypatch.setattr(distributed_eval.mp, "start_processes", spy)
    return counts


def test_two_cpu_processes_give_the_rows_of_one(classifier, repo, tmp_path, monkeypatch, started):
    # 16 images in 4 batches of 4: each rank gets two batches
    methods = "gradient,centre,gradcam"
    with monkeypatch.context() as patch:
        patch.setattr(distributed_eval.mp, "start_processes", _no_spawn)
        single = main(_args(repo, classifier, tmp_path / "one", 16, methods, "--devices", "1"))
    multi = main(_args(repo, classifier, tmp_path / "two", 16, methods, "--devices", "cpu:2"))
    assert started == [2]
    _assert_same_rows(single, multi)
    assert {r["method"] for r in multi} == {"gradient", "centre", "gradcam"}
    assert {r["metric"] for r in multi} >= {"pointing_game.accuracy", "segmentation.c_iou",
                                             "insertion_deletion.insertion", "insertion_deletion.deletion"}
    assert [r["n"] for r in multi if r["metric"] == "seconds_per_image"] == [16, 16, 16]
    accuracy = [r for r in multi if r["metric"] == "pointing_game.accuracy"]
    assert len(accuracy) == 3 and all(r["stderr"] > 0 for r in accuracy)  # over 4 batches
    out = tmp_path / "two"
    assert json.loads((out / "results.json").read_text()) == multi
    assert (out / "results.md").read_text().count("\n") == 5  # header, rule, three methods
    # rank 0 holds batch 0: the same example maps, so the same pictures
    for picture in ("examples.png", "curves.png"):
        assert (out / picture).read_bytes() == (tmp_path / "one" / picture).read_bytes(), picture


def test_odd_number_of_batches_and_resume(classifier, repo, tmp_path, started):
    # 10 images in batches of 4, 4, 2: rank 0 gets batches 0 and 2, rank 1 batch 1
    single = main(_args(repo, classifier, tmp_path / "one", 10, "centre,gradient"))
    out = tmp_path / "two"
    out.mkdir()
    kept = [r for r in single if r["method"] == "centre"]
    (out / "results.json").write_text(json.dumps(kept))
    multi = main(_args(repo, classifier, out, 10, "centre,gradient", "--devices", "cpu:2", "--resume"))
    assert started == [2]
    assert multi[:len(kept)] == kept  # reused verbatim
    _assert_same_rows(single, multi)
    assert [r["n"] for r in multi if r["metric"] == "seconds_per_image"] == [10, 10]
    assert json.loads((out / "results.json").read_text()) == multi
    assert (out / "examples.png").is_file() and (out / "curves.png").is_file()


def test_device_specs():
    cpu = torch.device("cpu")
    assert parse_devices("cpu:3") == [cpu] * 3
    assert parse_devices(" cpu ") == [cpu]
    assert parse_devices("cpu,cpu") == [cpu] * 2
    if not torch.cuda.is_available():
        assert parse_devices("2") == [cpu] * 2
    for spec, why in [("0", "at least one"), ("cpu:0", "positive"), ("cpu:x", "positive"),
                      ("", "'' is not a device"),
                      ("gpu:1", "'gpu:1' is not a device"), ("cpu,", "'' is not a device"),
                      ("cuda:99", "no GPU cuda:99"), ("cpu,cuda:99", "no GPU cuda:99")]:
        with pytest.raises(ValueError, match=f"--devices '{spec}': .*{why}.*; use a count"):
            parse_devices(spec)


def test_bad_devices_fail_before_any_work(classifier, repo, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed_eval.mp, "start_processes", _no_spawn)
    with pytest.raises(ValueError, match="--devices 'two': 'two' is not a device"):
        main(_args(repo, classifier, tmp_path / "a", 8, "centre", "--devices", "two"))
    with pytest.raises(ValueError, match="give only --devices"):
        main(_args(repo, classifier, tmp_path / "b", 8, "centre", "--devices", "cpu:2", "--device", "cpu"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_failing_worker_is_reported_in_the_parent(classifier, repo, tmp_path):
    missing = tmp_path / "missing"
    args = _args(repo, classifier, tmp_path / "out", 8, f"explainer={missing}", "--devices", "cpu:2")
    with pytest.raises(RuntimeError, match=r"(?s)evaluation worker \d of 2 \(cpu\) failed.*missing"):
        main(args)


def test_metrics_never_sync_on_compute_by_themselves():
    # the per-batch values of a rank's shard must not wait for the other ranks: combine_shards reduces
    from explainer.data.digits import DigitScenesDataModule
    from explainer.evaluation import METRIC_GROUPS, EvaluationSettings, _make_metrics, collect_batches
    from tests.helpers import tiny_net

    batch = collect_batches(DigitScenesDataModule(image_size=32, test_scenes=2, batch_size=2), None,
                            torch.device("cpu"))[0]
    metrics = _make_metrics(EvaluationSettings(), tiny_net(10).eval(), 10, batch)
    assert set(metrics) == set(METRIC_GROUPS)
    assert not any(m.sync_on_compute for m in metrics.values())
