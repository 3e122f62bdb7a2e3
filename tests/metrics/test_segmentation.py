"""Mask scores: a hand-computed case, sklearn's AUC, and a per-sample loop reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from explainer.methods import present_classes
from explainer.metrics import SEGMENTATION_KEYS, SegmentationMetrics, roc_auc_per_sample, segmentation_scores
from tests.metrics.batches import make_batch, random_box_batch


def test_hand_computed_case() -> None:
    m = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])
    g = torch.tensor([[[True, True], [False, False]]])
    s = {k: v.item() for k, v in segmentation_scores(m, g).items()}
    expected = {
        "d_f1_25": 1.0,
        "d_f1_50": 2 / 3,
        "d_f1_75": 2 / 3,
        "mean_f1": 7 / 9,
        "c_f1": 3 / 3.5,
        "acc": 0.875,
        "d_iou": 6.5 / 9,
        "c_iou": 0.75,
        "auc": 1.0,
        "overlap": 0.875,
        "background_coverage": 0.0,
        "object_coverage": 0.75,
    }
    assert s == pytest.approx(expected)


def test_auc_matches_sklearn_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (6, 40), generator=gen).float() / 4  # many ties
    labels = torch.rand(6, 40, generator=gen) < 0.3
    ours = roc_auc_per_sample(scores, labels)
    for i in range(6):
        assert ours[i].item() == pytest.approx(roc_auc_score(labels[i].numpy(), scores[i].numpy()), abs=1e-12)
    assert torch.isnan(roc_auc_per_sample(scores[:1], torch.ones(1, 40, dtype=torch.bool))).all()


def naive_scores(m: np.ndarray, g: np.ndarray) -> dict[str, float]:
    """One sample, straight from the definitions."""
    m, g = m.ravel().astype(np.float64), g.ravel().astype(np.float64)

    def f1(t):
        p, q = m > t, g > t
        tp, fp, fn = np.sum(p & q), np.sum(p & ~q), np.sum(~p & q)
        return 2 * tp / (2 * tp + fp + fn)

    def iou(t):
        p, q = m > t, g > t
        return np.sum(p & q) / np.sum(p | q)

    tp, fp, fn, tn = np.sum(m * g), np.sum(m * (1 - g)), np.sum((1 - m) * g), np.sum((1 - m) * (1 - g))
    out = {f"d_f1_{int(t * 100)}": f1(t) for t in (0.25, 0.5, 0.75)}
    out["mean_f1"] = np.mean([out["d_f1_25"], out["d_f1_50"], out["d_f1_75"]])
    out["c_f1"] = 2 * tp / (2 * tp + fp + fn)
    out["acc"] = (tp + tn) / m.size
    out["d_iou"] = np.mean([iou(t / 10) for t in range(1, 10)])
    out["c_iou"] = np.minimum(m, g).sum() / np.maximum(m, g).sum()
    out["auc"] = roc_auc_score(g > 0, m) if 0 < g.sum() < g.size else float("nan")
    out["overlap"] = 1 - np.mean(np.abs(g - m))
    out["background_coverage"] = np.mean(np.maximum(m - g, 0)) / (1 - g.mean()) if g.mean() < 1 else float("nan")
    out["object_coverage"] = 1 - np.mean(np.maximum(g - m, 0)) / g.mean()
    return out


def naive_metric(maps, batch, classes, source, mode):
    size = batch.image.shape[-2:]
    resized = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    samples = []
    for b in range(maps.shape[0]):
        pairs = []
        for k in range(maps.shape[1]):
            cls = int(classes[b, k])
            if cls < 0:
                continue
            if source == "masks":
                if not bool(batch.mask_valid[b]):
                    continue
                gt = batch.masks[b, cls].numpy()
            else:
                gt = np.zeros(tuple(size), dtype=bool)
                for box, lab in zip(batch.boxes[b], batch.box_labels[b], strict=True):
                    if int(lab) == cls:
                        x0, y0, x1, y1 = box.tolist()
                        for i in range(size[0]):
                            for j in range(size[1]):
                                gt[i, j] |= x0 <= j + 0.5 < x1 and y0 <= i + 0.5 < y1
                if not gt.any():
                    continue
            pairs.append((resized[b, k].numpy(), gt))
        if mode == "pairs":
            samples += [p for p in pairs if p[1].any()]
        elif pairs:
            merged = (np.max([p[0] for p in pairs], 0), np.any([p[1] for p in pairs], 0))
            if merged[1].any():
                samples.append(merged)
    per_sample = [naive_scores(m, g) for m, g in samples]
    return {key: np.nanmean([s[key] for s in per_sample]) for key in SEGMENTATION_KEYS}, len(samples)


@pytest.mark.parametrize("mode", ["pairs", "merged"])
@pytest.mark.parametrize("source", ["masks", "boxes"])
def test_matches_naive_reference(source: str, mode: str) -> None:
    gen = torch.Generator().manual_seed(3)
    size, num_classes = (12, 10), 4
    if source == "masks":
        masks = torch.rand(6, num_classes, *size, generator=gen) < 0.15
        masks[0] = False
        masks[0, 1, 0:6, 0:5] = True
        masks[0, 2] = True  # full-image ground truth: AUC and background coverage undefined
        masks[5, :] = False  # empty
        batch = make_batch(
            size,
            num_classes,
            masks=masks,
            mask_valid=torch.tensor([1, 1, 0, 1, 1, 1]).bool(),
            labels=(torch.rand(6, num_classes, generator=gen) < 0.6).float(),
        )
        batch.labels[0, 1:3] = 1
    else:
        batch = random_box_batch(gen, 6, size, num_classes, [size] * 6)
    classes = present_classes(batch.labels)
    maps = torch.rand(*classes.shape, 6, 5, generator=gen) ** 2
    metric = SegmentationMetrics(source=source, mode=mode)
    metric.update(maps, batch, classes)
    out = metric.compute()
    reference, count = naive_metric(maps, batch, classes, source, mode)
    assert out["samples"].item() == count and count >= 3
    for key in SEGMENTATION_KEYS:
        assert out[key].item() == pytest.approx(reference[key], abs=1e-9), key


def test_merge_state_undefined_keys_and_invalid() -> None:
    gen = torch.Generator().manual_seed(4)
    masks = torch.rand(4, 3, 8, 8, generator=gen) < 0.3
    masks[1, 0] = True
    batch = make_batch((8, 8), 3, masks=masks, labels=torch.ones(4, 3))
    classes = present_classes(batch.labels)
    maps = torch.rand(4, 3, 8, 8, generator=gen)
    maps[2, 1, 0, 0] = float("nan")
    whole = SegmentationMetrics()
    whole.update(maps, batch, classes)
    out = whole.compute()
    assert out["invalid"].item() == 1 and out["samples"].item() == 12
    assert whole.counts[SEGMENTATION_KEYS.index("auc")].item() == 11  # the full-image mask has no AUC
    halves = [SegmentationMetrics(), SegmentationMetrics()]
    for part, rows in zip(halves, (slice(0, 2), slice(2, 4)), strict=True):
        part.update(maps[rows], make_batch((8, 8), 3, masks=masks[rows], labels=torch.ones(2, 3)), classes[rows])
    halves[0].merge_state(halves[1])
    for key, value in out.items():
        torch.testing.assert_close(halves[0].compute()[key], value)


def test_normalisation_and_range_check() -> None:
    batch = make_batch(
        (4, 4), 1, masks=torch.ones(1, 1, 4, 4, dtype=torch.bool) & (torch.arange(4) < 2).view(1, 1, 1, 4)
    )
    maps = torch.arange(16.0).view(1, 1, 4, 4) - 4
    with pytest.raises(ValueError, match="normalize='minmax'"):
        SegmentationMetrics().update(maps, batch, torch.tensor([[0]]))
    minmax = SegmentationMetrics(normalize="minmax")
    minmax.update(maps, batch, torch.tensor([[0]]))
    positive = SegmentationMetrics(normalize="max")
    positive.update(maps, batch, torch.tensor([[0]]))
    expected_minmax = naive_scores(((maps - maps.min()) / (maps.max() - maps.min())).numpy(), batch.masks[0, 0].numpy())
    expected_max = naive_scores((maps.clamp(min=0) / maps.max()).numpy(), batch.masks[0, 0].numpy())
    for key in SEGMENTATION_KEYS:
        assert minmax.compute()[key].item() == pytest.approx(expected_minmax[key])
        assert positive.compute()[key].item() == pytest.approx(expected_max[key])


def test_soft_iou_against_boxes() -> None:
    batch = make_batch((8, 8), 2, boxes=[[(0, 0, 0, 4, 4), (0, 4, 4, 8, 8)]])
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, :4, :4] = 1.0  # covers one of the two boxes exactly
    mask[0, 0, 4:, :4] = 0.5  # half weight on background
    metric = SegmentationMetrics(source="boxes")
    metric.update(mask, batch, torch.tensor([[0]]))
    assert metric.compute()["c_iou"].item() == pytest.approx(16 / (32 + 8))
