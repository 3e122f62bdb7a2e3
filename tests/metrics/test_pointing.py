"""Pointing game: hand-built cases, the 15 px boundary, difficult handling, and a naive loop reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from explainer.methods import present_classes
from explainer.metrics import EnergyPointingGame, PointingGame, argmax_points, centre_points, gt_masks
from explainer.metrics.common import image_sizes
from tests.metrics.batches import make_batch, naive_box_mask, random_box_batch


def peak_maps(size: tuple[int, int], points: list[list[tuple[int, int]]]) -> torch.Tensor:
    """Maps that are 0 everywhere and 1 at the given ``(y, x)`` points."""
    maps = torch.zeros(len(points), len(points[0]), *size)
    for b, row in enumerate(points):
        for k, (y, x) in enumerate(row):
            maps[b, k, y, x] = 1.0
    return maps


@pytest.mark.parametrize(
    ("offset", "hit"),
    [((10, 11), True), ((9, 12), False), ((14, 0), True), ((15, 0), False), ((0, 14), True), ((0, 15), False)],
)
def test_disc_boundary_is_strict(offset: tuple[int, int], hit: bool) -> None:
    # a one-pixel box at (y, x) = (40, 40); the point sits at the given (dy, dx) from it:
    # (10, 11) is 14.87 px away (hit), (9, 12) exactly 15.0 px (miss: distance^2 < 15^2 is strict)
    batch = make_batch((64, 64), 3, boxes=[[(1, 40, 40, 41, 41)]])
    point = (40 - offset[0], 40 - offset[1])
    assert math.hypot(*offset) < 15 if hit else math.hypot(*offset) >= 15
    metric = PointingGame(num_classes=3, tolerance=15)
    metric.update(peak_maps((64, 64), [[point]]), batch, torch.tensor([[1]]))
    assert metric.hits.tolist() == [0, int(hit), 0]
    assert metric.misses.tolist() == [0, int(not hit), 0]
    assert metric.compute()["accuracy"].item() == float(hit)


def test_boundary_after_scaling_to_original_size() -> None:
    # a 32 px batch image of a 64 px original: box pixel 20 becomes original pixels 40-41
    batch = make_batch(
        (32, 32), 2, boxes=[[(0, 20, 20, 21, 21)], [(0, 20, 20, 21, 21)]], orig_size=[(64, 64), (64, 64)]
    )
    metric = PointingGame(num_classes=2, tolerance=15)
    points = torch.tensor([[[40, 26]], [[40, 25]]])  # 14 px and 15 px left of original column 40
    metric.update_points(points, batch, torch.tensor([[0], [0]]))
    assert metric.hits.tolist() == [1, 0] and metric.misses.tolist() == [1, 0]


def test_accuracy_is_mean_over_classes() -> None:
    # class 0: 2 hits of 2; class 1: 1 hit of 3 -> accuracy (1 + 1/3) / 2, hit rate 3/5
    boxes = [[(0, 0, 0, 8, 8), (1, 20, 20, 28, 28)], [(0, 0, 0, 8, 8), (1, 20, 20, 28, 28)], [(1, 20, 20, 28, 28)]]
    batch = make_batch((32, 32), 2, boxes=boxes)
    points = [[(4, 4), (24, 24)], [(4, 4), (4, 4)], [(0, 0), (0, 0)]]
    maps = peak_maps((32, 32), points)
    classes = torch.tensor([[0, 1], [0, 1], [1, -1]])
    metric = PointingGame(num_classes=2, tolerance=2)
    metric.update(maps, batch, classes)
    out = metric.compute()
    assert out["accuracy"].item() == pytest.approx((1 + 1 / 3) / 2)
    assert out["hit_rate"].item() == pytest.approx(3 / 5)
    assert metric.per_class().tolist() == pytest.approx([1.0, 1 / 3])


def test_difficult_classes_are_skipped_and_difficult_boxes_count_as_ground_truth() -> None:
    boxes = [[(0, 0, 0, 8, 8), (1, 20, 20, 28, 28), (1, 0, 20, 4, 24)]]
    difficult = [[True, False, True]]
    batch = make_batch((32, 32), 2, boxes=boxes, difficult=difficult)
    # class 0 has only a difficult box: skipped; class 1's point lies on its difficult box: a hit
    maps = peak_maps((32, 32), [[(2, 2), (22, 2)]])
    metric = PointingGame(num_classes=2, tolerance=1)
    metric.update(maps, batch, torch.tensor([[0, 1]]))
    assert metric.skipped.item() == 1
    assert metric.hits.tolist() == [0, 1] and metric.misses.tolist() == [0, 0]
    keep = PointingGame(num_classes=2, tolerance=1, skip_difficult=False)
    keep.update(maps, batch, torch.tensor([[0, 1]]))
    assert keep.skipped.item() == 0 and keep.hits.tolist() == [1, 1]


def test_difficult_subset_from_coverage() -> None:
    # image 0: two classes, class 0 small (1/16 of the image) -> difficult, class 1 large (1/2) -> not
    # image 1: one class only, small -> not difficult (no other class present)
    boxes = [[(0, 0, 0, 8, 8), (1, 0, 16, 32, 32)], [(0, 0, 0, 8, 8)]]
    batch = make_batch((32, 32), 2, boxes=boxes)
    maps = peak_maps((32, 32), [[(30, 30), (20, 20)], [(30, 30), (0, 0)]])  # class 0 misses in both images
    metric = PointingGame(num_classes=2, tolerance=1)
    metric.update(maps, batch, torch.tensor([[0, 1], [0, -1]]))
    assert metric.hits_difficult.tolist() == [0, 0] and metric.misses_difficult.tolist() == [1, 0]
    out = metric.compute()
    assert out["accuracy_difficult"].item() == 0.0
    assert out["accuracy"].item() == pytest.approx((0 + 1) / 2)
    # explicit flags override the rule
    flagged = PointingGame(num_classes=2, tolerance=1)
    flagged.update(
        maps, batch, torch.tensor([[0, 1], [0, -1]]), difficult=torch.tensor([[False, True], [False, False]])
    )
    assert flagged.hits_difficult.tolist() == [0, 1] and flagged.misses_difficult.tolist() == [0, 0]


def test_invalid_maps_are_misses_and_counted() -> None:
    batch = make_batch((16, 16), 2, boxes=[[(0, 0, 0, 16, 16), (1, 0, 0, 16, 16)]])
    maps = torch.zeros(1, 2, 16, 16)
    maps[0, 0, 3, 3] = float("nan")  # non-finite -> invalid
    # map 1 is constant -> invalid; both would "hit" the full-image boxes but count as misses
    metric = PointingGame(num_classes=2)
    metric.update(maps, batch, torch.tensor([[0, 1]]))
    out = metric.compute()
    assert out["invalid"].item() == 2 and out["accuracy"].item() == 0.0


def test_argmax_points_match_per_image_interpolation() -> None:
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 2, 7, 9, generator=gen)
    sizes = torch.tensor([[20, 31], [7, 9], [33, 12]])
    points = argmax_points(maps, sizes)
    for b in range(3):
        for k in range(2):
            ref = F.interpolate(
                maps[b : b + 1, k : k + 1], size=tuple(sizes[b].tolist()), mode="bilinear", align_corners=False
            )[0, 0]
            y, x = points[b, k].tolist()
            assert ref[y, x] == pytest.approx(ref.max().item(), abs=1e-6)
            assert (y, x) == divmod(int(ref.flatten().argmax()), ref.shape[1])


def naive_pointing(maps, batch, classes, tolerance, source, skip_difficult=True):
    """One image and one class at a time: resize, argmax, dense ground truth, dense disc test."""
    hits, misses = {}, {}
    height, width = batch.image.shape[-2:]
    for b in range(maps.shape[0]):
        orig = tuple(batch.orig_size[b].tolist())
        for k in range(maps.shape[1]):
            cls = int(classes[b, k])
            if cls < 0:
                continue
            if source == "boxes":
                flags = [
                    bool(d) for d, lab in zip(batch.difficult[b], batch.box_labels[b], strict=True) if int(lab) == cls
                ]
                if not flags or (skip_difficult and all(flags)):
                    continue
                gt = naive_box_mask(batch, b, cls, orig)
            else:
                gt = (
                    F.interpolate(batch.masks[b : b + 1, cls : cls + 1].float(), size=orig, mode="nearest-exact")[0, 0]
                    > 0
                )
                if not gt.any():
                    continue
            resized = F.interpolate(maps[b : b + 1, k : k + 1], size=orig, mode="bilinear", align_corners=False)[0, 0]
            py, px = divmod(int(resized.flatten().argmax()), orig[1])
            ys, xs = torch.meshgrid(torch.arange(orig[0]), torch.arange(orig[1]), indexing="ij")
            radius = tolerance(orig) if callable(tolerance) else tolerance
            disc = (ys - py) ** 2 + (xs - px) ** 2 < radius**2
            target = hits if bool((disc & gt).any()) else misses
            target[cls] = target.get(cls, 0) + 1
    return hits, misses


@pytest.mark.parametrize("source", ["boxes", "masks"])
def test_matches_naive_reference(source: str) -> None:
    gen = torch.Generator().manual_seed(1)
    num_classes, size = 4, (12, 16)
    # up- and down-sizing, and 17 rows from 12 (row 8 maps exactly onto a pixel boundary: exact arithmetic)
    orig_sizes = [(24, 32), (30, 20), (12, 16), (6, 7), (17, 29), (13, 40), (40, 13), (5, 9)]
    if source == "boxes":
        batch = random_box_batch(gen, 8, size, num_classes, orig_sizes)
    else:
        masks = torch.rand(8, num_classes, *size, generator=gen) < 0.02
        batch = make_batch(size, num_classes, masks=masks, orig_size=orig_sizes)
    classes = present_classes(batch.labels)
    maps = torch.rand(*classes.shape, 6, 8, generator=gen)
    metric = PointingGame(num_classes=num_classes, source=source, tolerance=5)
    metric.update(maps, batch, classes)
    hits, misses = naive_pointing(maps, batch, classes, 5, source)
    assert metric.hits.tolist() == [hits.get(c, 0) for c in range(num_classes)]
    assert metric.misses.tolist() == [misses.get(c, 0) for c in range(num_classes)]
    assert metric.hits.sum() >= 3 and metric.misses.sum() >= 3  # both outcomes exercised


def test_default_radius_matches_naive_reference() -> None:
    gen = torch.Generator().manual_seed(8)
    orig_sizes = [(230, 300), (100, 240), (224, 224), (50, 70), (223, 400), (300, 260), (60, 60), (250, 100)]
    batch = random_box_batch(gen, 8, (12, 16), 4, orig_sizes)
    classes = present_classes(batch.labels)
    maps = torch.rand(*classes.shape, 6, 8, generator=gen)
    metric = PointingGame(num_classes=4)
    metric.update(maps, batch, classes)
    hits, misses = naive_pointing(
        maps, batch, classes, lambda size: 15 if min(size) >= 224 else min(size) * 15 / 224, "boxes"
    )
    assert metric.hits.tolist() == [hits.get(c, 0) for c in range(4)]
    assert metric.misses.tolist() == [misses.get(c, 0) for c in range(4)]
    assert metric.hits.sum() >= 3 and metric.misses.sum() >= 3


def test_merging_states_equals_one_pass() -> None:
    gen = torch.Generator().manual_seed(2)
    batch = random_box_batch(gen, 6, (16, 16), 3, [(32, 24)] * 3 + [(16, 16)] * 3)
    classes = present_classes(batch.labels)
    maps = torch.rand(*classes.shape, 16, 16, generator=gen)
    whole = PointingGame(num_classes=3, tolerance=3)
    whole.update(maps, batch, classes)
    halves = [PointingGame(num_classes=3, tolerance=3) for _ in range(2)]
    for part, rows in zip(halves, (slice(0, 3), slice(3, 6)), strict=True):
        sub = make_batch(
            (16, 16),
            3,
            boxes=[
                [(int(lab), *box.tolist()) for box, lab in zip(bx, lb, strict=True)]
                for bx, lb in zip(batch.boxes[rows], batch.box_labels[rows], strict=True)
            ],
            difficult=[d.tolist() for d in batch.difficult[rows]],
            orig_size=batch.orig_size[rows].tolist(),
        )
        part.update(maps[rows], sub, classes[rows])
    halves[0].merge_state(halves[1])
    for key, value in whole.compute().items():
        torch.testing.assert_close(halves[0].compute()[key], value, equal_nan=True)


def test_relative_tolerance_and_centre_baseline() -> None:
    batch = make_batch((64, 64), 1, boxes=[[(0, 36, 32, 40, 36)]], orig_size=[(64, 64)])
    # centre (32, 32): nearest box pixel (32, 36), 4 px away; 15/224 of 64 px = 4.29 px -> hit; 3 px -> miss
    points = centre_points(image_sizes(batch), 1)
    assert points.tolist() == [[[32, 32]]]
    relative = PointingGame(num_classes=1, tolerance_relative=15 / 224)
    relative.update_points(points, batch, torch.tensor([[0]]))
    absolute = PointingGame(num_classes=1, tolerance=3)
    absolute.update_points(points, batch, torch.tensor([[0]]))
    assert relative.hits.item() == 1 and absolute.hits.item() == 0


def test_energy_pointing_game() -> None:
    batch = make_batch((8, 8), 2, boxes=[[(0, 0, 0, 4, 4)]])
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 1, 1] = 3.0  # inside
    maps[0, 0, 6, 6] = 1.0  # outside
    maps[0, 0, 5, 5] = -5.0  # negative: ignored
    metric = EnergyPointingGame(num_classes=2)
    metric.update(maps, batch, torch.tensor([[0]]))
    assert metric.compute()["energy"].item() == pytest.approx(0.75)
    # no positive mass -> 0 and invalid; against the rasterised ground truth
    metric.update(-torch.ones(1, 1, 8, 8), batch, torch.tensor([[0]]))
    out = metric.compute()
    assert out["energy"].item() == pytest.approx(0.375) and out["invalid"].item() == 1
    assert gt_masks(batch, torch.tensor([[0]]), "boxes")[0, 0].sum().item() == 16


def test_default_radius_is_chosen_per_image() -> None:
    # TorchRay's 15 px where the shorter side is >= 224 px, 15/224 of the shorter side below, per image:
    # a 375x500 image batched with a 200x500 one keeps its 15 px (not 15/224 * 375 = 25.1 px)
    metric = PointingGame(num_classes=1)
    sizes = torch.tensor([[375, 500], [200, 500], [224, 300], [64, 64], [500, 223]])
    expected = [15.0, 200 * 15 / 224, 15.0, 64 * 15 / 224, 223 * 15 / 224]
    assert metric.radius(sizes).tolist() == pytest.approx(expected, abs=1e-12)
    assert metric.radius(sizes).dtype == torch.float64
    assert PointingGame(num_classes=1, tolerance=15).radius(sizes).tolist() == [15.0] * 5
    relative = PointingGame(num_classes=1, tolerance_relative=15 / 224).radius(sizes)
    assert relative.tolist() == pytest.approx([s * 15 / 224 for s in (375, 200, 224, 64, 223)], abs=1e-12)
    with pytest.raises(ValueError, match="at most one of tolerance"):
        PointingGame(num_classes=1, tolerance=15, tolerance_relative=15 / 224)
    with pytest.raises(ValueError, match="non-negative"):
        PointingGame(num_classes=1, tolerance=-1)


def test_per_image_radius_decides_hits() -> None:
    # batch images 25x50 of originals 375x500 (scale 15 in y, 10 in x) and 200x500 (scale 8 in y, 10 in x);
    # the box (x 20-21, y 10-11) covers original columns 200-209 and rows 150-164 / 80-87
    batch = make_batch(
        (25, 50), 1, boxes=[[(0, 20, 10, 21, 11)], [(0, 20, 10, 21, 11)]], orig_size=[(375, 500), (200, 500)]
    )
    # image 0: 20 px left of the box; image 1: 14 px left of it
    points = torch.tensor([[[157, 180]], [[84, 186]]])
    classes = torch.tensor([[0], [0]])
    outcomes = {}
    for name, options in {
        "per image": {},
        "fixed 15": {"tolerance": 15.0},
        "relative": {"tolerance_relative": 15 / 224},
    }.items():
        metric = PointingGame(num_classes=1, **options)
        metric.update_points(points, batch, classes)
        single = []
        for b in range(2):  # one image at a time, to see each outcome
            one = PointingGame(num_classes=1, **options)
            sub = make_batch((25, 50), 1, boxes=[[(0, 20, 10, 21, 11)]], orig_size=[tuple(batch.orig_size[b].tolist())])
            one.update_points(points[b : b + 1], sub, classes[:1])
            single.append(int(one.hits.item()))
        assert metric.hits.item() == sum(single)
        outcomes[name] = single
    # per image: 15 px (20 px away: miss) and 13.39 px (14 px away: miss)
    assert outcomes["per image"] == [0, 0]
    assert outcomes["fixed 15"] == [0, 1]  # 14 px < 15 px
    assert outcomes["relative"] == [1, 0]  # 25.1 px for the 375 px image, 13.39 px for the 200 px one


def write_list(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_difficult_subset_from_a_published_list(tmp_path) -> None:
    # the coverage case above, with a list instead: image "0" flags class 1 only; image "1" is not listed,
    # so all its pairs count in the subset (as in TorchRay) and in difficult_unlisted
    boxes = [[(0, 0, 0, 8, 8), (1, 0, 16, 32, 32)], [(0, 0, 0, 8, 8)]]
    batch = make_batch((32, 32), 2, boxes=boxes)
    maps = peak_maps((32, 32), [[(30, 30), (20, 20)], [(30, 30), (0, 0)]])  # class 0 misses, class 1 hits
    classes = torch.tensor([[0, 1], [0, -1]])
    path = write_list(tmp_path / "voc07_difficult.txt", ["# image\tclass flags", "", "0\t0\t1  # a comment", "7 1 1"])
    metric = PointingGame(num_classes=2, tolerance=1, difficult_list=path)
    assert metric.difficult_source == "list:voc07_difficult.txt"
    metric.update(maps, batch, classes)
    assert metric.hits_difficult.tolist() == [0, 1] and metric.misses_difficult.tolist() == [1, 0]
    out = metric.compute()
    assert out["accuracy_difficult"].item() == pytest.approx((0 + 1) / 2)
    assert out["difficult_unlisted"].item() == 1
    assert "_difficult_table" not in metric.state_dict()
    # every image listed: nothing unlisted; explicit flags still override the list
    full = write_list(tmp_path / "full.txt", ["0 0 1", "1 0 0"])
    listed = PointingGame(num_classes=2, tolerance=1, difficult_list=full)
    listed.update(maps, batch, classes)
    assert listed.hits_difficult.tolist() == [0, 1] and listed.misses_difficult.tolist() == [0, 0]
    assert listed.compute()["difficult_unlisted"].item() == 0
    flagged = PointingGame(num_classes=2, tolerance=1, difficult_list=full)
    flagged.update(maps, batch, classes, difficult=torch.tensor([[True, False], [False, False]]))
    assert flagged.misses_difficult.tolist() == [1, 0] and flagged.hits_difficult.tolist() == [0, 0]
    assert PointingGame(num_classes=2).difficult_source == "coverage"
    assert PointingGame(num_classes=2, difficult_coverage=None).difficult_source == "none"


def test_difficult_list_matches_coco_file_names_by_number(tmp_path) -> None:
    # TorchRay's COCO list names images by file stem; the COCO data module's ids are the image ids
    path = write_list(
        tmp_path / "coco.txt",
        ["COCO_val2014_000000000042 1 0", "COCO_val2014_000000000073 0 1", "a_0005 1 1", "b_0005 0 0"],
    )  # number 5 is ambiguous
    table = PointingGame(num_classes=2, difficult_list=path)._difficult_list
    flags, unlisted = table.lookup(["73", "42", "5", "COCO_val2014_000000000042", "x"], torch.tensor([[0, 1]] * 5))
    assert flags.tolist() == [[False, True], [True, False], [True, True], [True, False], [True, True]]
    assert unlisted.tolist() == [False, False, True, False, True]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["000001 0 1", "000002 0"], r"line 2: expected an image id followed by 2 flags 0/1 .* got 1 values"),
        (["# header", "000001 0 2"], r"line 2: .* got a value '2'"),
        (["000001 0 1", "", "000001 1 1"], r"line 3: image id '000001' is listed twice"),
        (["# only comments"], "has no entries"),
    ],
)
def test_difficult_list_errors_name_file_and_line(tmp_path, lines: list[str], message: str) -> None:
    path = write_list(tmp_path / "bad.txt", lines)
    with pytest.raises(ValueError, match=message) as error:
        PointingGame(num_classes=2, difficult_list=path)
    assert str(path) in str(error.value)


def test_difficult_list_missing_file_and_missing_ids(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.txt not found .* one line per image"):
        PointingGame(num_classes=2, difficult_list=tmp_path / "missing.txt")
    metric = PointingGame(num_classes=2, difficult_list=write_list(tmp_path / "ok.txt", ["0 1 1"]))
    batch = make_batch((16, 16), 2, boxes=[[(0, 0, 0, 8, 8)]])
    batch.ids = None
    with pytest.raises(ValueError, match="matches images by Batch.ids"):
        metric.update(peak_maps((16, 16), [[(1, 1)]]), batch, torch.tensor([[0]]))


def test_forward_gives_batch_values_and_accumulates(tmp_path) -> None:
    # per-image radii (15 px and 15/224 of the shorter side) in one batch, split into two batches
    gen = torch.Generator().manual_seed(4)
    batch = random_box_batch(gen, 8, (16, 16), 3, [(300, 400)] * 3 + [(100, 120)] * 3 + [(16, 16)] * 2)
    classes = present_classes(batch.labels)
    maps = torch.rand(*classes.shape, 16, 16, generator=gen)
    path = write_list(tmp_path / "list.txt", ["0 1 0 1", "3 1 1 1", "4 0 0 0", "7 1 1 0"])
    halves = (slice(0, 3), slice(3, 8))
    parts = []
    for rows in halves:
        parts.append(
            make_batch(
                (16, 16),
                3,
                boxes=[
                    [(int(lab), *box.tolist()) for box, lab in zip(bx, lb, strict=True)]
                    for bx, lb in zip(batch.boxes[rows], batch.box_labels[rows], strict=True)
                ],
                difficult=[d.tolist() for d in batch.difficult[rows]],
                orig_size=batch.orig_size[rows].tolist(),
            )
        )
        parts[-1].ids = batch.ids[rows]
    for options in ({}, {"difficult_list": path}):
        whole = PointingGame(num_classes=3, **options)
        whole.update(maps, batch, classes)
        streamed = PointingGame(num_classes=3, **options)
        for part, rows in zip(parts, halves, strict=True):
            alone = PointingGame(num_classes=3, **options)
            alone.update(maps[rows], part, classes[rows])
            batch_values = streamed(maps[rows], part, classes[rows])
            for key, value in alone.compute().items():
                torch.testing.assert_close(batch_values[key], value, equal_nan=True)
        for key, value in whole.compute().items():
            torch.testing.assert_close(streamed.compute()[key], value, equal_nan=True)
        assert 0 < whole.compute()["hit_rate"] < 1 and whole.hits_difficult.sum() > 0
