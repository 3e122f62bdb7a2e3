"""``benchmarks/gpu_check.sh --dry-run``: the GPU check's code paths on the CPU, writing the same files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_dry_run_measures_every_section_and_writes_both_files(repo, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    run = subprocess.run(
        ["bash", str(repo / "benchmarks/gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["dry_run"] is True and report["finished"] and report["environment"]["dry_run"] is True
    assert report["tests"]["returncode"] == 0 and "skipped" in report["tests"]["summary"]  # no CUDA here
    training = report["training"]["rows"]
    assert [(r["precision"], r["channels_last"], r["compiled"]) for r in training] == [
        ("32-true", False, False),
        ("bf16-mixed", True, False),
        ("bf16-mixed", True, True),
    ]
    assert training[0]["batch_size"] == 2 and training[1]["batch_size"] == training[2]["batch_size"] == 8
    assert [t["batch_size"] for t in report["training"]["batch_search"]] == [2, 4, 8]
    for row in training:
        assert row["images_per_second"] > 0 and row["loss"] == row["loss"]  # finite, not NaN
    explain = {r["setup"]: r for r in report["explain"]["rows"]}
    assert set(explain) == {"mask network forward, fp32", "explain(), fp32", "explain(), bf16-mixed"}
    assert [r["num_masks"] for r in report["rise"]["rows"]] == [100, 100]
    insdel = report["insertion_deletion"]
    assert len(insdel["rows"]) == 2 and insdel["max_auc_difference"] < 1e-3
    loading = report["data_loading"]["rows"]
    assert {r["setup"] for r in loading} == {
        f"{name} [{decoder}]"
        for name in (
            "VOC2007 train (labels + boxes)",
            "VOC2007 test (+ masks on 1/4)",
            "COCO2014 train (labels + boxes)",
        )
        for decoder in ("pil", "torchvision")
    }
    assert all(r["images_per_second"] > 0 and r["one_worker_images_per_second"] > 0 for r in loading)
    assert (tmp_path / "data_loading.json").is_file()
    assert len(report["ratios"]) == 6 and all(v > 0 for v in report["ratios"].values())
    table = (tmp_path / "gpu.md").read_text()
    assert "dry run" in table and report["environment"]["device"] in table
    for row in (*training, *report["rise"]["rows"], *insdel["rows"], *loading):
        assert f"| {row['setup']} |" in table
