"""The controls of ``benchmarks/prototypes.py``: k vectors per class that reconstruct the head exactly."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "prototypes.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("prototype_benchmark", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's names through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("control", ["random_split", "random_directions"])
def test_controls_sum_to_the_head_and_depend_on_the_seed(bench, control, k):
    weight = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    make = getattr(bench, control)
    protos = make(weight, k, seed=1)
    assert protos.shape == (4, k, 64) and protos.dtype == torch.float64
    torch.testing.assert_close(protos.sum(1), weight.double(), rtol=0, atol=1e-12)
    torch.testing.assert_close(make(weight, k, seed=1), protos, rtol=0, atol=0)
    if k > 1:
        assert not torch.allclose(make(weight, k, seed=2), protos)


def test_random_split_keeps_the_sign_of_every_weight(bench):
    weight = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    protos = bench.random_split(weight, 4, seed=0)
    assert ((protos * weight.double()[:, None, :]) >= 0).all()


def test_random_directions_have_the_heads_scale(bench):
    """Deviations from v / k have about v's per-dimension RMS (times sqrt(1 - 1/k) after centring)."""
    weight = torch.randn(2, 4096, generator=torch.Generator().manual_seed(0)) * 0.3
    k = 4
    protos = bench.random_directions(weight, k, seed=0)
    deviation = protos - weight.double()[:, None, :] / k
    rms = deviation.square().mean((1, 2)).sqrt()
    expected = weight.double().square().mean(1).sqrt() * (1 - 1 / k) ** 0.5
    torch.testing.assert_close(rms, expected, rtol=0.03, atol=0)


def test_the_benchmark_runs_on_cub_with_its_15_parts(bench, tmp_path):
    """``--data cub``: collection from the training split, every test image scored, exact heads."""
    import json

    from tests.data.fake_datasets import make_cub200
    from tests.helpers import write_classifier_checkpoint

    birds = make_cub200(tmp_path / "cub", num_classes=3, per_class=6)
    names = [f"Fake_Bird_{c}" for c in range(3)]  # the data module's names, in its order
    _, ckpt = write_classifier_checkpoint(tmp_path, num_classes=3, class_names=names)
    out = tmp_path / "cub.json"
    result = bench.main(
        [
            "--data",
            "cub",
            "--data-root",
            str(tmp_path / "cub"),
            "--classifier",
            str(ckpt),
            "--k",
            "2",
            "--image-size",
            "32",
            "--control-seeds",
            "2",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["data"] == "cub"
    assert result["eval_images"] == sum(not b.train for b in birds)
    assert result["timings"]["train_images"] == sum(b.train for b in birds)
    heads = {row["head"] for row in result["rows"]}
    assert {"fitted", "random split (control)", "random directions", "equal split (class map)"} <= heads
    for row in result["rows"]:
        assert 0 <= row["consistency"] <= 1 and 0 <= row["stability"] <= 1
        if row["head"] != "NMF parts alone (not exact)":
            assert row["logit_max_abs_diff"] < 1e-4 and row["argmax_agreement"] == 1.0


def test_cub_needs_its_root(bench):
    with pytest.raises(ValueError, match="--data-root"):
        bench.make_data("cub")
