"""GridPG / DiFull / DiPart: wrappers, localisation score, grid builder, ML-Att layers, AggAtt, evaluate.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from explainer.classifiers.factory import build_classifier
from explainer.classifiers.frozen import FrozenClassifier
from explainer.data.batch import Sample
from explainer.evaluation.plan import expand_methods
from explainer.methods import build_method
from explainer.methods.common import layer_by_role
from explainer.metrics.localisation import LocalisationScore, localisation_scores
from explainer.nets.masknets import build_mask_net, transfer_class_heads
from explainer.protocols import (
    GridDataset,
    cell_slices,
    check_cell_independence,
    split_cells,
    tile_cells,
    wrap_for_protocol,
)
from explainer.protocols.aggatt import aggatt_bins, save_aggatt
from explainer.protocols.base import get_protocol
from explainer.protocols.grid import Candidates, choose_threshold, grid_targets, score_source


# -- localisation score ---------------------------------------------------------------------------------
def naive_score(m: torch.Tensor, cell: int, n: int) -> float:
    h, w = m.shape
    total = inside = 0.0
    for y in range(h):
        for x in range(w):
            v = max(float(m[y, x]), 0.0)
            total += v
            if (y * n // h) * n + (x * n // w) == cell:
                inside += v
    return inside / total if total > 1e-12 else 0.0


@pytest.mark.parametrize("n", [2, 3])
def test_uniform_map_scores_exactly_one_over_n_squared_and_a_confined_map_one(n):
    size = 12 * n
    maps = torch.ones(2, n * n, size, size)
    cells = torch.arange(n * n).expand(2, -1)
    scores, invalid = localisation_scores(maps, cells, n)
    assert torch.equal(scores, torch.full((2 * n * n,), 1.0 / n**2))
    assert not invalid.any()
    confined = torch.zeros(1, n * n, size, size)
    for i in range(n * n):
        rows, cols = cell_slices((size, size), n, i)
        confined[0, i, rows, cols] = torch.rand(12, 12) + 0.1
        confined[0, i] -= 0.5 * (confined[0, i] == 0).float()  # negative values outside do not count
    scores, _ = localisation_scores(confined, torch.arange(n * n)[None], n)
    assert torch.equal(scores, torch.ones(n * n))


def test_localisation_score_matches_a_naive_loop_and_keeps_the_distribution():
    torch.manual_seed(0)
    maps = torch.randn(3, 2, 16, 16)
    maps[1, 1] = -1.0  # no positive mass: scores 0
    cells = torch.tensor([[0, 3], [1, 2], [2, -1]])
    scores, _ = localisation_scores(maps, cells, 2)
    expected = [naive_score(maps[b, k], int(cells[b, k]), 2) for b in range(3) for k in range(2) if cells[b, k] >= 0]
    assert torch.allclose(scores, torch.tensor(expected), atol=1e-6)
    assert scores[3] == 0
    metric = LocalisationScore(2)
    metric.update(maps[:2], cells[:2])
    metric.update(maps[2:], cells[2:])
    out = metric.compute()
    ref = torch.tensor(expected)
    assert out["samples"] == 5 and torch.isclose(out["mean"], ref.mean())
    assert torch.isclose(out["median"], ref.median()) and torch.isclose(out["q1"], torch.quantile(ref, 0.25))
    assert torch.allclose(metric.scores(), ref)


def test_nan_maps_are_counted_and_scored_on_their_finite_part():
    maps = torch.ones(1, 1, 8, 8)
    maps[0, 0, 0, 0] = float("nan")
    metric = LocalisationScore(2)
    metric.update(maps, torch.tensor([[0]]))
    out = metric.compute()
    assert out["invalid"] == 1 and math.isclose(float(out["mean"]), 15 / 63, rel_tol=1e-6)


# -- wrappers ---------------------------------------------------------------------------------------------
@pytest.fixture(params=["digitnet", "resnet18"])
def frozen(request):
    torch.manual_seed(0)
    net = build_classifier(request.param, 5)
    with torch.no_grad():
        net.train()(torch.randn(4, 3, 32, 32))  # non-trivial BatchNorm statistics
    return FrozenClassifier(net, class_names=list("abcde"))


def test_difull_logits_of_a_cell_never_depend_on_the_other_cells(frozen):
    wrapped = wrap_for_protocol(frozen, "difull", 2)
    torch.manual_seed(1)
    grid = torch.randn(1, 3, 64, 64)
    for cell in (0, 3):
        assert check_cell_independence(wrapped.net, grid, cell, torch.randn_like(grid) * 3) == 0.0
    # and they equal the classifier's logits on the cell alone
    logits = wrapped(grid).view(1, 4, 5)
    for cell in range(4):
        rows, cols = cell_slices((64, 64), 2, cell)
        assert torch.allclose(logits[:, cell], frozen(grid[..., rows, cols]), atol=1e-5)
    assert wrapped.class_names == get_protocol("difull").class_names(list("abcde"), 2) and wrapped.num_classes == 20


def test_dipart_cells_see_their_neighbours_but_gridpg_is_the_classifier_on_the_grid(frozen):
    grid = torch.randn(2, 3, 64, 64)
    gridpg = wrap_for_protocol(frozen, "gridpg", 2)
    assert torch.allclose(gridpg(grid), frozen(grid), atol=1e-5)
    dipart = wrap_for_protocol(frozen, "dipart", 2)
    assert dipart(grid).shape == (2, 20)
    # replacing another cell changes a DiPart cell's logits only through receptive fields at the border
    assert check_cell_independence(dipart.net, grid, 0, torch.randn_like(grid)) > 0


def test_split_and_tile_are_inverse():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    cells = split_cells(x, 3)
    assert cells.shape == (18, 3, 2, 2)
    assert torch.equal(cells[4], x[0, :, 2:4, 2:4]) and torch.equal(tile_cells(cells, 3), x)


def test_wrappers_reject_heads_they_cannot_split():
    opaque = build_classifier("tests.helpers:opaque_net", 3)
    with pytest.raises(ValueError, match="features, pool and head"):
        wrap_for_protocol(opaque, "difull")
    with pytest.raises(ValueError, match="valid protocols"):
        wrap_for_protocol(build_classifier("digitnet", 3), "grid")


# -- ML-Att ------------------------------------------------------------------------------------------------
def test_layer_input_x_gradient_is_activation_times_gradient_and_ig_equals_it_before_a_linear_head():
    torch.manual_seed(0)
    frozen = FrozenClassifier(build_classifier("digitnet", 4))
    images = torch.randn(2, 3, 32, 32)
    classes = torch.tensor([[1], [3]])
    ixg = build_method("input_x_gradient", frozen, layer="final")(images, classes)
    # by hand: A * dy/dA summed over channels at the last feature block, upsampled
    acts = frozen.net.features(images).detach().requires_grad_(True)
    logits = frozen.net.forward_head(acts)
    (grad,) = torch.autograd.grad(logits[[0, 1], [1, 3]].sum(), acts)
    manual = torch.nn.functional.interpolate(
        (acts * grad).sum(1, keepdim=True), size=(32, 32), mode="bilinear", align_corners=False
    )
    assert torch.allclose(ixg, manual, atol=1e-5)
    ig = build_method("integrated_gradients", frozen, layer="final", steps=5)(images, classes)
    assert torch.allclose(ig, ixg, atol=1e-5)  # pooling + linear head: the path integral is exact
    grad_map = build_method("gradient", frozen, layer="middle")(images, classes)
    assert grad_map.shape == (2, 1, 32, 32) and (grad_map >= 0).all()


def test_layer_roles_and_errors():
    frozen = FrozenClassifier(build_classifier("digitnet", 4))
    assert layer_by_role(frozen, "input") is None
    assert layer_by_role(frozen, "final") == "net.features.5"
    assert layer_by_role(frozen, "middle") == "net.features.2"
    difull = wrap_for_protocol(frozen, "difull")
    assert layer_by_role(difull, "final") == "net.grid_features"
    with pytest.raises(ValueError, match="only the input and final"):
        layer_by_role(difull, "middle")
    assert layer_by_role(wrap_for_protocol(frozen, "dipart"), "middle") == "net.base.features.2"
    with pytest.raises(ValueError, match="no layer form"):
        build_method("guided_backprop", frozen, layer="final")
    with pytest.raises(ValueError, match="features.5"):
        build_method("gradient", frozen, layer="net.features.99")


def test_gradients_are_confined_under_difull_and_gradcam_lights_up_the_repeated_class():
    """The paper's finding on a constructed case: the same image in the top-left and bottom-right cells."""
    torch.manual_seed(0)
    net = build_classifier("digitnet", 4)
    with torch.no_grad():
        net.train()(torch.randn(8, 3, 32, 32))
    difull = wrap_for_protocol(FrozenClassifier(net), "difull")
    cell = torch.randn(1, 3, 32, 32)
    grid = torch.zeros(1, 3, 64, 64)
    grid[..., :32, :32] = cell
    grid[..., 32:, 32:] = cell
    grid[..., :32, 32:] = torch.randn(1, 3, 32, 32)
    grid[..., 32:, :32] = torch.randn(1, 3, 32, 32)
    target = int(net(cell).argmax())
    classes = torch.tensor([[target, 3 * 4 + target]])
    cells = torch.tensor([[0, 3]])
    grad_scores, _ = localisation_scores(build_method("gradient", difull)(grid, classes), cells, 2)
    assert torch.allclose(grad_scores, torch.ones(2))
    cam_scores, _ = localisation_scores(build_method("gradcam", difull)(grid, classes), cells, 2)
    assert (cam_scores < 0.55).all()  # the identical copy gets as much as the explained cell


# -- grids -------------------------------------------------------------------------------------------------
class CodedImages(torch.utils.data.Dataset):
    """Single-label images whose first pixel codes the class and whose second the classifier's confidence."""

    def __init__(self, n: int = 60, classes: int = 6) -> None:
        gen = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n) % classes
        self.conf = torch.rand(n, generator=gen) * 0.2 + 0.8
        self.classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Sample:
        image = torch.full((3, 8, 8), float(i))
        image[0, 0, 0], image[0, 0, 1] = float(self.labels[i]), float(self.conf[i])
        labels = torch.zeros(self.classes)
        labels[self.labels[i]] = 1
        return Sample(image=image, labels=labels)


class CodedClassifier(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label, conf = x[:, 0, 0, 0].long(), x[:, 0, 0, 1]
        logits = torch.full((len(x), 6), -10.0)
        logits[torch.arange(len(x)), label] = torch.logit(conf)
        return logits


def test_grids_hold_distinct_confident_classes_and_difull_repeats_the_top_left_one():
    data = CodedImages()
    index, label, conf = score_source(data, CodedClassifier())
    assert torch.allclose(torch.tensor(conf), torch.sigmoid(torch.logit(data.conf)))
    threshold = 0.9
    cands = Candidates(index, label, conf, threshold)
    grids = GridDataset(data, cands, list("abcdef"), num_grids=20, protocol="gridpg", seed=3)
    for g in range(20):
        sample = grids[g]
        classes, sources = grids.layout(g)
        assert len(set(classes)) == 4 and all(float(data.conf[s]) >= threshold for s in sources)
        assert sample.image.shape == (3, 16, 16)
        assert torch.equal(sample.image[:, 8:, :8], data[sources[2]].image)  # cell 2: bottom-left
        assert sample.box_labels.tolist() == classes and sample.labels.sum() == 4
    assert torch.equal(grids[5].image, GridDataset(data, cands, list("abcdef"), 20, seed=3)[5].image)
    difull = GridDataset(data, cands, list("abcdef"), num_grids=20, protocol="difull", seed=3)
    for g in range(20):
        classes, sources = difull.layout(g)
        assert classes[0] == classes[3] and sources[0] != sources[3] and len(set(classes)) == 3
        sample = difull[g]
        assert sample.box_labels.tolist() == [i * 6 + c for i, c in enumerate(classes)]
        assert sample.labels.shape == (24,) and sample.labels.sum() == 4
    assert difull.label_names[7] == "cell1:b"


def test_threshold_is_relaxed_with_a_warning_and_fails_clearly():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    conf = np.array([0.999, 0.999, 0.999, 0.999, 0.96, 0.96, 0.96, 0.96])
    assert choose_threshold(labels, conf, 4, 2, False, 0.99) == 0.99
    with pytest.warns(UserWarning, match="relaxed the threshold to 0.95"):
        assert choose_threshold(labels, conf, 4, 4, False, 0.99) == 0.95
    with pytest.raises(ValueError, match="fewer than 4 classes"):
        choose_threshold(labels[:6], conf[:6], 4, 4, False, 0.99)


def test_grid_targets_score_every_cell_for_gridpg_and_the_repeated_pair_otherwise():
    from explainer.data.batch import collate

    sample = Sample(image=torch.zeros(3, 4, 4), labels=torch.zeros(24), box_labels=torch.tensor([1, 8, 14, 19]))
    batch = collate([sample, sample])
    classes, cells = grid_targets(batch, "difull", 2)
    assert classes.tolist() == [[1, 19]] * 2 and cells.tolist() == [[0, 3]] * 2
    classes, cells = grid_targets(batch, "gridpg", 2)
    assert cells.tolist() == [[0, 1, 2, 3]] * 2


def test_per_cell_classes_start_from_their_digit_head():
    old = build_mask_net("unet", 3, width=4, depth=2)
    new = build_mask_net("unet", 12, width=4, depth=2)
    state = transfer_class_heads(
        new, old.state_dict(), ["a", "b", "c"], get_protocol("dipart").class_names(["a", "b", "c"], 2)
    )
    new.load_state_dict(state)
    head = [k for k in state if k.startswith(new.head_prefix) and k.endswith("weight")][0]
    assert torch.equal(state[head][3 + 1], old.state_dict()[head][1])  # cell1:b <- b


def test_aggatt_bins_follow_the_percentiles():
    maps = torch.stack([torch.full((4, 4), float(i)) for i in range(100)])
    scores = torch.arange(100, dtype=torch.float32).flip(0)  # map i has score 99 - i
    bins = aggatt_bins(maps - 50, scores)
    # bin 0 (lowest 2 scores) holds maps 99 and 98 -> mean positive value 48.5; bin 5 (top 2) maps 0, 1 -> 0
    assert bins.shape == (6, 4, 4)
    assert torch.allclose(bins[0], torch.full((4, 4), 48.5)) and torch.equal(bins[5], torch.zeros(4, 4))
    assert torch.allclose(bins[3], torch.full((4, 4), float(np.mean([max(i - 50, 0) for i in range(5, 50)]))))


def test_aggatt_png(tmp_path):
    path = save_aggatt(torch.rand(6, 16, 16), tmp_path / "a.png", 2, 0, title="x")
    assert path.stat().st_size > 1000


def test_method_expansion_over_layers_and_smoothing():
    rows = expand_methods({"gradcam": {}, "gradient": {}, "rise": {}}, ["input", "final"], None)
    assert [r[0] for r in rows] == ["gradcam@final", "gradient@input", "gradient@final", "rise"]
    assert rows[0][2] == {"layer": "final"} and rows[1][2] == {}
    assert any("no input-layer form" in n for n in rows[0][3])
    smoothed = expand_methods({"input_x_gradient": {}}, None, 5)
    assert smoothed == [
        ("input_x_gradient+smooth5", "smooth", {"method": "input_x_gradient", "kernel_size": 5, "options": {}}, [])
    ]


# -- evaluate.py --protocol ----------------------------------------------------------------------------------
def test_evaluate_protocol_end_to_end(tmp_path, repo, monkeypatch):
    """The CLI on tiny digit grids; the confidence vetting (tested above) is bypassed: every cell image counts
    as confidently right, since a random classifier is rarely right."""
    from explainer.evaluation.cli import main
    from explainer.protocols import grid as grid_module
    from tests.helpers import write_classifier_checkpoint

    def everyone(dataset, classifier, **kwargs):
        labels = torch.stack([dataset[i].labels for i in range(len(dataset))]).argmax(1).numpy()
        return np.arange(len(labels)), labels, np.ones(len(labels), np.float32)

    monkeypatch.setattr(grid_module, "score_source", everyone)
    _, ckpt = write_classifier_checkpoint(tmp_path)
    out = tmp_path / "difull"
    args = [
        "--data",
        str(repo / "configs/data/digits_single.yaml"),
        "--data-arg",
        "image_size=32",
        "--data-arg",
        "test_scenes=60",
        "--data-arg",
        "batch_size=4",
        "--classifier",
        str(ckpt),
        "--protocol",
        "difull",
        "--methods",
        "gradcam,gradient,centre",
        "--layer",
        "input,final",
        "--limit",
        "8",
        "--trainer.enable_progress_bar",
        "false",
        "--out",
        str(out),
    ]
    rows = main(args)
    methods = {r["method"] for r in rows}
    assert methods == {"gradcam@final", "gradient@input", "gradient@final", "centre"}
    value = {(r["method"], r["metric"]): r["value"] for r in rows}
    assert value[("gradient@input", "difull.mean")] == pytest.approx(1.0)  # DiFull: no gradient leaves the cell
    assert value[("centre", "difull.median")] < 0.5
    assert all(r["n"] == 16 for r in rows if r["metric"].startswith("difull.") and r["metric"] != "difull.invalid")
    assert {r["targets"] for r in rows} == {"cells 0,3"}  # the scored cells; the protocol names the metric
    assert json.loads((out / "results.json").read_text()) == rows
    for name in ("scores.png", "aggatt.png", "aggatt/gradcam@final.png", "results.md"):
        assert (out / name).is_file()
    resumed = [a if a != "gradcam,gradient,centre" else "gradcam,gradient,centre,uniform" for a in args]
    rows3 = main([*resumed, "--resume"])
    assert [r for r in rows3 if r["method"] != "uniform"] == rows
    saved = torch.load(out / "distributions.pt", weights_only=True)
    assert list(saved["scores"]) == ["gradcam@final", "gradient@input", "gradient@final", "centre", "uniform"]
    rows2 = main(
        [*args[:-2], "--out", str(tmp_path / "smooth"), "--smooth", "5", "--methods", "gradient", "--layer", "input"]
    )
    assert {r["method"] for r in rows2} == {"gradient@input+smooth5"}
    with pytest.raises(SystemExit):
        main([*args[:-2], "--out", str(tmp_path / "bad"), "--smooth", "4"])


def test_layers_and_smoothing_on_natural_images(tmp_path, repo):
    from explainer.evaluation.cli import main
    from tests.helpers import write_classifier_checkpoint

    _, ckpt = write_classifier_checkpoint(tmp_path)
    rows = main(
        [
            "--data",
            str(repo / "configs/data/digits.yaml"),
            "--data-arg",
            "image_size=32",
            "--data-arg",
            "test_scenes=6",
            "--classifier",
            str(ckpt),
            "--methods",
            "gradient,gradcam",
            "--layer",
            "final",
            "--smooth",
            "3",
            "--metrics",
            "pointing_game",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert {r["method"] for r in rows} == {"gradient@final+smooth3", "gradcam@final+smooth3"}
