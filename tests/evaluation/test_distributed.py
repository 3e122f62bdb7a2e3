"""evaluate.py on Lightning's strategies: DDP processes and torchrun nodes give the rows of one process."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from explainer.data.digits import DigitScenesDataModule
from explainer.evaluation.cli import data_spec, device_options, main
from explainer.export import export_explainer
from explainer.modules import ExplainerModule
from tests.evaluation import partial_nan
from tests.helpers import write_classifier_checkpoint

METRICS = ["--metrics", "pointing_game,segmentation,insertion_deletion,saliency", "--insertion-step", "64"]
QUIET = ["--trainer.enable_progress_bar", "false"]
DDP_CPU = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return write_classifier_checkpoint(tmp_path_factory.mktemp("classifier"))[1]


@pytest.fixture(scope="module")
def explainer(classifier, tmp_path_factory):
    """An Explainer export for ``classifier`` (untrained weights: the maps only need to be deterministic)."""
    torch.manual_seed(0)
    module = ExplainerModule(str(classifier), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2})
    return export_explainer(module, tmp_path_factory.mktemp("explainer") / "export")


def _args(repo, ckpt, out, scenes: int, methods: str, *extra: str) -> list[str]:
    return [
        "--data",
        str(repo / "configs/data/digits.yaml"),
        "--data-arg",
        "image_size=32",
        "--data-arg",
        f"test_scenes={scenes}",
        "--data-arg",
        "batch_size=4",
        "--classifier",
        str(ckpt),
        "--out",
        str(out),
        "--methods",
        methods,
        *METRICS,
        *QUIET,
        *extra,
    ]


def _environment(repo) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
        env.pop(key, None)
    return env


def _run(commands: list[list[str]], repo, cwd) -> None:
    """Starts every command at once (the nodes of one job) and waits for all of them."""
    procs = [
        subprocess.Popen(
            c, cwd=cwd, env=_environment(repo), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for c in commands
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_same_rows(single: list[dict], multi: list[dict]) -> float:
    """Asserts equal rows (to 1e-5) and counts; returns the largest difference of a value or standard error."""
    assert [(r["method"], r["metric"]) for r in multi] == [(r["method"], r["metric"]) for r in single]
    worst = 0.0
    for one, many in zip(single, multi, strict=True):
        where = f"{one['method']} {one['metric']}"
        assert many["n"] == one["n"], where
        assert many["targets"] == one["targets"]
        if one["metric"] == "seconds_per_image":  # a timing: only its image count can agree
            continue
        assert math.isclose(many["value"], one["value"], rel_tol=0, abs_tol=1e-5), where
        worst = max(worst, abs(many["value"] - one["value"]))
        if one["stderr"] is None or math.isnan(one["stderr"]):
            assert many["stderr"] is None or math.isnan(many["stderr"]), where
        else:
            assert math.isclose(many["stderr"], one["stderr"], rel_tol=0, abs_tol=1e-5), where
            worst = max(worst, abs(many["stderr"] - one["stderr"]))
    print(f"{len(single)} rows equal, largest difference {worst:.3g}")
    return worst


def test_two_ddp_processes_give_the_rows_of_one_and_resume(classifier, explainer, repo, tmp_path):
    # 14 images in batches of 4, 4, 4, 2: rank 0 gets batches 0 and 2 (8 images), rank 1 batches 1 and 3 (6);
    # partial_nan breaks the first image of every batch, so both ranks see invalid maps
    methods = f"centre,gradient,gradcam,oracle,explainer={explainer},partial_nan"
    single = main(_args(repo, classifier, tmp_path / "one", 14, methods))
    out = tmp_path / "two"
    out.mkdir()
    kept = [r for r in single if r["method"] == "centre"]
    one_settings = json.loads((tmp_path / "one" / "settings.json").read_text())
    (out / "results.json").write_text(json.dumps(kept))
    (out / "settings.json").write_text(json.dumps(one_settings))
    command = [
        sys.executable,
        partial_nan.__file__,  # evaluate.py with partial_nan registered
        *_args(repo, classifier, out, 14, methods, "--resume", *DDP_CPU, "--trainer.devices", "2"),
    ]
    _run([command], repo, tmp_path)
    multi = json.loads((out / "results.json").read_text())
    assert multi[: len(kept)] == kept  # reused verbatim
    _assert_same_rows(single, multi)
    assert {r["method"] for r in multi} == {"centre", "gradient", "gradcam", "oracle", "explainer", "partial_nan"}
    assert [r["n"] for r in multi if r["metric"] == "seconds_per_image"] == [14] * 6
    iou = {r["method"]: r["stderr"] for r in multi if r["metric"] == "segmentation.c_iou"}
    assert len(iou) == 6 and all(e > 0 for m, e in iou.items() if m != "oracle")  # 4 batches on two ranks
    assert iou["oracle"] == pytest.approx(0, abs=1e-6)  # the true masks score 1 on every batch
    invalid = {
        r["metric"]: r["value"] for r in multi if r["method"] == "partial_nan" and r["metric"].endswith("invalid")
    }
    first_images = [0, 4, 8, 12]  # the pairs of the first image of each batch, on both ranks
    spec = data_spec(str(repo / "configs/data/digits.yaml"), ["image_size=32", "test_scenes=14", "batch_size=4"])
    test_split = DigitScenesDataModule(**spec["init_args"])._dataset("test")
    broken_pairs = sum(int(test_split[i].labels.sum()) for i in first_images)
    assert invalid["pointing_game.invalid"] == broken_pairs > 0
    assert invalid["segmentation.invalid"] == broken_pairs
    assert (out / "results.md").read_text().startswith("| method |")
    assert (out / "examples.png").is_file() and (out / "curves.png").is_file()


@pytest.mark.slow
def test_two_torchrun_nodes_give_the_rows_of_one(classifier, explainer, repo, tmp_path):
    # two "nodes" of one process each, rendezvous over localhost, as a multi-node torchrun or SLURM job runs
    methods = f"explainer={explainer},gradcam,gradient,centre,oracle"
    single = main(_args(repo, classifier, tmp_path / "one", 10, methods))
    port = str(_free_port())
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    commands = [
        [
            torchrun,
            "--nnodes",
            "2",
            "--node-rank",
            str(rank),
            "--nproc-per-node",
            "1",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            port,
            str(repo / "evaluate.py"),
            *_args(
                repo,
                classifier,
                tmp_path / "two",
                10,
                methods,
                *DDP_CPU,
                "--trainer.devices",
                "1",
                "--trainer.num_nodes",
                "2",
            ),
        ]
        for rank in (0, 1)
    ]
    _run(commands, repo, tmp_path)
    multi = json.loads((tmp_path / "two" / "results.json").read_text())
    _assert_same_rows(single, multi)
    assert [r["n"] for r in multi if r["metric"] == "seconds_per_image"] == [10] * 5
    # rank 0 holds batch 0: the same example maps, so the same picture
    assert (tmp_path / "two" / "examples.png").read_bytes() == (tmp_path / "one" / "examples.png").read_bytes()


def test_device_shorthands_are_trainer_options():
    assert device_options("auto", None) == []
    assert device_options("cpu", None) == ["--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    assert device_options("cuda:1", None) == ["--trainer.accelerator", "gpu", "--trainer.devices", "[1]"]
    assert device_options("auto", "cpu:3") == [
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "3",
        "--trainer.strategy",
        "ddp",
    ]
    assert device_options("auto", "2") == [
        "--trainer.accelerator",
        "auto",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
    ]
    assert device_options("auto", "cuda:0,cuda:2") == [
        "--trainer.accelerator",
        "gpu",
        "--trainer.devices",
        "[0, 2]",
        "--trainer.strategy",
        "ddp",
    ]
    for spec in ("0", "cpu:0", "cpu:x", "", "gpu:1", "cpu,", "cuda:0,cuda:0"):
        with pytest.raises(ValueError, match=f"--devices '{spec}': use a count"):
            device_options("auto", spec)
    with pytest.raises(ValueError, match="--device 'tpu': use auto, cpu"):
        device_options("tpu", None)


def test_bad_devices_fail_before_any_work(classifier, repo, tmp_path):
    with pytest.raises(SystemExit):
        main(_args(repo, classifier, tmp_path / "a", 8, "centre", "--devices", "two"))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['--bogus'\]"):
        main(_args(repo, classifier, tmp_path / "b", 8, "centre", "--bogus", "1"))
    with pytest.raises(ValueError, match="--trainer.strategy ddp_spawn: evaluate.py needs every process"):
        main(
            _args(
                repo,
                classifier,
                tmp_path / "c",
                8,
                "centre",
                "--trainer.strategy",
                "ddp_spawn",
                "--trainer.devices",
                "2",
                "--trainer.accelerator",
                "cpu",
            )
        )
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_failing_rank_fails_the_run(classifier, repo, tmp_path):
    missing = tmp_path / "missing"
    command = [
        sys.executable,
        str(repo / "evaluate.py"),
        *_args(repo, classifier, tmp_path / "out", 8, f"explainer={missing}", *DDP_CPU, "--trainer.devices", "2"),
    ]
    run = subprocess.run(command, cwd=tmp_path, env=_environment(repo), capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "missing" in run.stderr
    assert not (tmp_path / "out" / "results.json").exists()
