"""Consistency and stability of part-prototypes: hand-computed cases and a naive reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from explainer.metrics.prototypes import (
    PrototypeConsistency,
    PrototypeStability,
    prototype_hits,
    prototype_noise,
)


def _peak_map(height: int, width: int, y: int, x: int) -> torch.Tensor:
    m = torch.zeros(height, width)
    m[y, x] = 1.0
    return m


def test_hand_computed_consistency():
    # 64 px images, box side 64 * 72 / 224 = 20.57 px (half 10.29) around the peak pixel's centre
    maps = torch.zeros(2, 2, 2, 64, 64)
    maps[0, 1, 0] = _peak_map(64, 64, 10, 10)  # peak centre (10.5, 10.5)
    maps[0, 1, 1] = _peak_map(64, 64, 50, 50)
    maps[1, 1, 0] = _peak_map(64, 64, 40, 40)
    maps[1, 1, 1] = _peak_map(64, 64, 5, 60)  # peak centre (60.5, 5.5)
    nan = float("nan")
    keypoints = [
        torch.tensor([[[12.0, 14.0], [40.0, 40.0]]]),  # image 0, class 1: part 0 near p0, part 1 far
        torch.tensor([[[45.0, 45.0], [nan, nan]]]),
    ]  # image 1, class 1: part 0 near p0, part 1 hidden
    labels = [torch.tensor([1]), torch.tensor([1])]
    metric = PrototypeConsistency(2, 2, 2, threshold=0.8)
    metric.update(maps, keypoints, labels, (64, 64))
    # p0 hits part 0 in 2/2 images; p1 never: (40, 40) is 10.5 > 10.29 px from (50.5, 50.5) on each axis
    torch.testing.assert_close(metric.hits[1], torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(metric.visible[1], torch.tensor([2.0, 1.0]))
    assert metric.per_prototype()[1].tolist() == [True, False]
    assert metric.compute().item() == pytest.approx(0.5)  # class 0 never seen: only class 1 counts
    metric.set_valid(torch.tensor([[True, True], [True, False]]))
    assert metric.compute().item() == pytest.approx(1.0)


def test_hand_computed_stability():
    maps = torch.zeros(1, 1, 2, 8, 8)
    maps[0, 0, 0] = _peak_map(8, 8, 1, 1)
    maps[0, 0, 1] = _peak_map(8, 8, 6, 6)
    noisy = maps.clone()
    noisy[0, 0, 1] = _peak_map(8, 8, 1, 1)  # prototype 1 jumps onto the part
    keypoints = [torch.tensor([[[1.5, 1.5]]])]
    metric = PrototypeStability(1, 2, 1, box_fraction=0.25)
    metric.update(maps, noisy, keypoints, [torch.tensor([0])], (8, 8))
    torch.testing.assert_close(metric.per_prototype(), torch.tensor([[1.0, 0.0]]))
    assert metric.compute().item() == pytest.approx(0.5)
    same = PrototypeStability(1, 2, 1)
    same.update(maps, maps, keypoints, [torch.tensor([0])], (8, 8))
    assert same.compute().item() == 1.0


def _naive_hits(maps, keypoints, box_labels, size, frac):
    """Loop reference: {(image, class): (hits [k][P], visible [P])}."""
    height, width = size
    out = {}
    for b in range(maps.shape[0]):
        for c in sorted(set(box_labels[b].tolist())):
            up = F.interpolate(maps[b, c][None], size=size, mode="bilinear", align_corners=False)[0]
            parts = keypoints[b].shape[1]
            hits = [[False] * parts for _ in range(maps.shape[2])]
            visible = [False] * parts
            for i in range(maps.shape[2]):
                idx = int(up[i].flatten().argmax())
                py, px = idx // width + 0.5, idx % width + 0.5
                for j in range(len(box_labels[b])):
                    if int(box_labels[b][j]) != c:
                        continue
                    for p in range(parts):
                        x, y = keypoints[b][j, p].tolist()
                        if math.isnan(x) or math.isnan(y):
                            continue
                        visible[p] = True
                        if abs(x - px) <= frac * width / 2 and abs(y - py) <= frac * height / 2:
                            hits[i][p] = True
            out[(b, c)] = (hits, visible)
    return out


def _random_case(gen, batch=6, classes=3, k=2, parts=3, size=(24, 32)):
    maps = torch.rand(batch, classes, k, 6, 8, generator=gen)
    keypoints, labels = [], []
    for _ in range(batch):
        n = int(torch.randint(0, 4, (1,), generator=gen))
        kp = torch.rand(n, parts, 2, generator=gen) * torch.tensor([size[1], size[0]])
        kp[torch.rand(n, parts, generator=gen) < 0.2] = float("nan")
        keypoints.append(kp)
        labels.append(torch.randint(0, classes, (n,), generator=gen))
    return maps, keypoints, labels


def test_metrics_match_a_naive_loop():
    gen = torch.Generator().manual_seed(0)
    size, frac = (24, 32), 0.4
    consistency = PrototypeConsistency(3, 2, 3, box_fraction=frac, threshold=0.5)
    stability = PrototypeStability(3, 2, 3, box_fraction=frac)
    hits_sum = torch.zeros(3, 2, 3)
    vis_sum = torch.zeros(3, 3)
    same_sum, img_sum = torch.zeros(3, 2), torch.zeros(3)
    for _ in range(3):
        maps, keypoints, labels = _random_case(gen)
        noisy = maps + 0.3 * torch.rand(maps.shape, generator=gen)
        consistency.update(maps, keypoints, labels, size)
        stability.update(maps, noisy, keypoints, labels, size)
        clean_ref = _naive_hits(maps, keypoints, labels, size, frac)
        noisy_ref = _naive_hits(noisy, keypoints, labels, size, frac)
        for (b, c), (hits, visible) in clean_ref.items():
            hits_sum[c] += torch.tensor(hits, dtype=torch.float)
            vis_sum[c] += torch.tensor(visible, dtype=torch.float)
            same_sum[c] += torch.tensor([hits[i] == noisy_ref[(b, c)][0][i] for i in range(2)], dtype=torch.float)
            img_sum[c] += 1
    torch.testing.assert_close(consistency.hits, hits_sum)
    torch.testing.assert_close(consistency.visible, vis_sum)
    ratio = hits_sum / vis_sum[:, None].clamp(min=1)
    per = ((ratio >= 0.5) & (vis_sum[:, None] > 0)).any(-1)
    seen = vis_sum.sum(-1) > 0
    assert consistency.compute().item() == pytest.approx(per[seen].float().mean().item())
    torch.testing.assert_close(stability.unchanged, same_sum)
    expected = (same_sum / img_sum[:, None])[img_sum > 0].mean()
    assert stability.compute().item() == pytest.approx(expected.item())


def test_states_add_up_across_batches_like_across_processes():
    gen = torch.Generator().manual_seed(1)
    cases = [_random_case(gen) for _ in range(2)]
    whole, first, second = (PrototypeConsistency(3, 2, 3) for _ in range(3))
    for maps, kp, lab in cases:
        whole.update(maps, kp, lab, (24, 32))
    first.update(*cases[0], (24, 32))
    second.update(*cases[1], (24, 32))
    torch.testing.assert_close(first.hits + second.hits, whole.hits)
    torch.testing.assert_close(first.visible + second.visible, whole.visible)


def test_no_objects_and_bad_shapes():
    metric = PrototypeConsistency(2, 2, 3)
    metric.update(torch.rand(2, 2, 2, 4, 4), [torch.zeros(0, 3, 2)] * 2, [torch.zeros(0, dtype=torch.long)] * 2, (8, 8))
    assert math.isnan(metric.compute().item())
    assert prototype_hits(torch.rand(1, 2, 2, 4, 4), [torch.zeros(0, 3, 2)], [torch.zeros(0)], (8, 8)) is None
    with pytest.raises(ValueError, match=r"maps must be \[B, 2, 2, h, w\]"):
        metric.update(torch.rand(2, 3, 2, 4, 4), [torch.zeros(0, 3, 2)] * 2, [torch.zeros(0)] * 2, (8, 8))
    with pytest.raises(ValueError, match=r"keypoints must be \[n, 3, 2\]"):
        metric.update(torch.rand(1, 2, 2, 4, 4), [torch.zeros(1, 15, 2)], [torch.zeros(1)], (8, 8))


def test_noise_is_clipped_gaussian():
    images = torch.zeros(4, 3, 64, 64)
    noisy = prototype_noise(images, std=0.2, clip=0.25, generator=torch.Generator().manual_seed(0))
    assert noisy.abs().max() <= 0.25 + 1e-7
    assert (noisy.abs() == 0.25).float().mean().item() == pytest.approx(0.2113, abs=0.01)  # P(|N(0,1)| > 1.25)
    assert noisy.std().item() == pytest.approx(0.169, abs=0.01)  # std of N(0, 0.2) clipped at 1.25 sigma
