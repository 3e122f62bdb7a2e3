"""The Explainer's loss terms against naive loop-based references written here (to 1e-6)."""

from __future__ import annotations

import math

import pytest
import torch

from explainer.losses import (
    LossWeights,
    class_area_loss,
    explainer_loss,
    inverse_entropy_loss,
    target_masks,
    total_variation,
)

torch.manual_seed(0)
B, C, H, W = 3, 5, 7, 6


@pytest.fixture
def data():
    logits = torch.randn(B, C, H, W, dtype=torch.float64) * 3
    targets = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    return logits, targets


def naive_masks(logits, targets):
    target = torch.zeros(B, 1, H, W, dtype=logits.dtype)
    nontarget = torch.zeros(B, 1, H, W, dtype=logits.dtype)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                present = [logits[b, c, i, j].item() for c in range(C) if targets[b, c] > 0]
                absent = [logits[b, c, i, j].item() for c in range(C) if targets[b, c] == 0]
                target[b, 0, i, j] = 1 / (1 + math.exp(-max(present))) if present else 0.0
                nontarget[b, 0, i, j] = 1 / (1 + math.exp(-max(absent))) if absent else 0.0
    return target, nontarget


def test_target_masks_match_naive(data):
    logits, targets = data
    m, n = target_masks(logits, targets)
    nm, nn_ = naive_masks(logits, targets)
    torch.testing.assert_close(m, nm, atol=1e-6, rtol=0)
    torch.testing.assert_close(n, nn_, atol=1e-6, rtol=0)


def test_entropy_term_matches_naive():
    logits = torch.randn(4, 6, dtype=torch.float64)
    total = 0.0
    for b in range(4):
        exps = [math.exp(v) for v in logits[b].tolist()]
        for c in range(6):
            p = max(exps[c] / sum(exps), 1e-16)
            total += -p * math.log(p)
    assert abs(inverse_entropy_loss(logits).item() - (-total / 24)) < 1e-6


def test_total_variation_matches_naive():
    mask = torch.rand(2, 1, H, W, dtype=torch.float64)
    total = 0.0
    for b in range(2):
        for i in range(H):
            for j in range(W):
                right = mask[b, 0, i, j + 1] if j + 1 < W else mask[b, 0, i, W - 2]  # reflect padding
                down = mask[b, 0, i + 1, j] if i + 1 < H else mask[b, 0, H - 2, j]
                total += abs(right - mask[b, 0, i, j]).item() + abs(down - mask[b, 0, i, j]).item()
    assert abs(total_variation(mask).item() - total / (2 * H * W)) < 1e-6


def test_class_area_matches_naive(data):
    logits, targets = data
    n = H * W
    lo, hi = 0.1, 0.4
    total = 0.0
    for b in range(B):
        for c in range(C):
            if targets[b, c] == 0:
                continue
            s = sorted((1 / (1 + math.exp(-v)) for v in logits[b, c].flatten().tolist()), reverse=True)
            k_min, k_max = int(lo * n), int(hi * n)
            per = [
                max(0.0, (1.0 if r < k_min else 0.0) - s[r]) + max(0.0, s[r] - (1.0 if r < k_max else 0.0))
                for r in range(n)
            ]
            total += sum(per) / n
    assert abs(class_area_loss(logits, targets, lo, hi).item() - total / B) < 1e-6


def test_full_loss_is_the_weighted_sum(data):
    logits, targets = data
    m, n = target_masks(logits, targets)
    masked, inverse = torch.randn(B, C, dtype=torch.float64), torch.randn(B, C, dtype=torch.float64)
    w = LossWeights(entropy=3.0, tv=0.5, class_area=0.8, target_area=0.01, nontarget_area=0.3)
    out = explainer_loss(logits, targets, masked, inverse, m, n, w)
    expected = (
        out["classification"]
        + 3.0 * out["entropy"]
        + 0.5 * out["tv"]
        + 0.8 * out["class_area"]
        + 0.01 * out["target_area"]
        + 0.3 * out["nontarget_area"]
    )
    assert abs(out["loss"].item() - expected.item()) < 1e-12
    bce = torch.nn.functional.binary_cross_entropy_with_logits(masked, targets)
    assert abs(out["classification"].item() - bce.item()) < 1e-12
    assert abs(out["target_area"].item() - m.mean().item()) < 1e-12


def test_a_registered_term_joins_the_loss_with_its_weight(data, monkeypatch):
    from explainer.losses import LOSS_TERMS, register_loss_term

    monkeypatch.setattr(LOSS_TERMS, "_entries", dict(LOSS_TERMS._entries))  # the registration stays in this test
    register_loss_term("mask_mass")(lambda x, w: x.target_mask.sum() / x.target_mask.shape[0])
    logits, targets = data
    m, n = target_masks(logits, targets)
    masked, inverse = torch.randn(B, C, dtype=torch.float64), torch.randn(B, C, dtype=torch.float64)
    plain = explainer_loss(logits, targets, masked, inverse, m, n, LossWeights())
    out = explainer_loss(logits, targets, masked, inverse, m, n, LossWeights(extra={"mask_mass": 0.25}))
    assert out["mask_mass"].item() == pytest.approx(m.sum().item() / B)
    assert out["loss"].item() == pytest.approx(plain["loss"].item() + 0.25 * out["mask_mass"].item(), abs=1e-12)
    with pytest.raises(ValueError, match="unknown loss term .mass.; valid loss terms: class_area, class_deletion"):
        LossWeights(extra={"mass": 1.0})
    with pytest.raises(ValueError, match="one of the paper's; set its weight with `tv:`"):
        LossWeights(extra={"tv": 1.0})
