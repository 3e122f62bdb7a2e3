"""Saliency metric and class-specificity test: hand-computed cases and per-sample loop references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from explainer.methods import present_classes
from explainer.metrics import ClassSpecificity, SaliencyMetric
from tests.helpers import tiny_net


class HalvesNet(nn.Module):
    """Logit of class 0 / 1 / 2 = 10 * mean of channel 0 over the left half / right half / whole image - 5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        channel = x[:, 0]
        means = [channel[..., :half].mean((1, 2)), channel[..., half:].mean((1, 2)), channel.mean((1, 2))]
        return 10 * torch.stack(means, dim=1) - 5


def tiny_classifier(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return tiny_net(num_classes).double().eval()


def test_saliency_hand_computed() -> None:
    images = torch.ones(2, 3, 8, 8)
    maps = torch.zeros(2, 1, 8, 8)
    maps[0, 0, :, :4] = 1.0  # area 1/2, left half kept: logit 10 * 1 - 5 = 5
    maps[1, 0, 0, 4] = 1.0  # area 1/64 < 0.05, right half mean 1/32: logit 10/32 - 5
    metric = SaliencyMetric(HalvesNet(), mode="pairs")
    metric.update(images, maps, torch.tensor([[0], [1]]))
    sig = torch.sigmoid
    expected = [
        math.log(0.5) - math.log(sig(torch.tensor(5.0))),
        math.log(0.05) - math.log(sig(torch.tensor(10 / 32 - 5))),
    ]
    out = metric.compute()
    assert out["saliency"].item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    assert out["area"].item() == pytest.approx((0.5 + 1 / 64) / 2)
    # paper mode with sigmoid: max of both halves' masks -> whole image kept, p = mean of sigmoid(5) over 0 and 1
    merged = SaliencyMetric(HalvesNet(), mode="paper", activation="sigmoid")
    two = torch.zeros(1, 2, 8, 8)
    two[0, 0, :, :4] = 1.0
    two[0, 1, :, 4:] = 1.0
    merged.update(images[:1], two, torch.tensor([[0, 1]]))
    assert merged.compute()["saliency"].item() == pytest.approx(-math.log(sig(torch.tensor(5.0))), abs=1e-6)
    # the paper's default: softmax over HalvesNet's three logits (5, 5, 5) summed over classes 0 and 1 -> 2/3
    paper = SaliencyMetric(HalvesNet())
    paper.update(images[:1], two, torch.tensor([[0, 1]]))
    assert paper.compute()["saliency"].item() == pytest.approx(-math.log(2 / 3), abs=1e-9)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("mode", ["pairs", "paper"])
def test_saliency_matches_naive_loop(activation: str, mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    net = tiny_classifier(5)
    images = torch.randn(4, 3, 16, 16, generator=gen, dtype=torch.float64)
    labels = (torch.rand(4, 5, generator=gen) < 0.5).double()
    labels[0] = 0
    labels[0, 2] = 1
    classes = present_classes(labels)
    maps = torch.rand(*classes.shape, 8, 8, generator=gen, dtype=torch.float64) ** 3
    metric = SaliencyMetric(net, activation=activation, mode=mode, chunk_size=3)
    metric.update(images, maps, classes)
    up = torch.nn.functional.interpolate(maps, size=(16, 16), mode="bilinear", align_corners=False)
    scores = []
    for b in range(4):
        ks = [k for k in range(classes.shape[1]) if classes[b, k] >= 0]
        groups = [[k] for k in ks] if mode == "pairs" else [ks]
        for group in groups:
            mask = torch.stack([up[b, k] for k in group]).amax(0)
            with torch.no_grad():
                logits = net((images[b] * mask).unsqueeze(0))[0]
            probs = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, 0)
            chosen = [probs[int(classes[b, k])] for k in group]
            p = sum(chosen) / len(chosen) if activation == "sigmoid" else sum(chosen)
            scores.append(math.log(max(mask.mean().item(), 0.05)) - math.log(p))
    out = metric.compute()
    assert out["samples"].item() == len(scores)
    assert out["saliency"].item() == pytest.approx(sum(scores) / len(scores), abs=1e-9)


def test_class_specificity_hand_computed() -> None:
    images = torch.ones(1, 3, 4, 8)
    masks = torch.zeros(1, 3, 4, 8)
    masks[0, 0, :, :4] = 1.0  # class 0's mask: left half
    masks[0, 1, :, 4:] = 1.0  # class 1's mask: right half; class 2 absent, empty mask
    metric = ClassSpecificity(HalvesNet())
    metric.update(images, masks, torch.tensor([[1.0, 1.0, 0.0]]))
    out = metric.compute()
    high, low = torch.sigmoid(torch.tensor(5.0)).item(), torch.sigmoid(torch.tensor(-5.0)).item()
    assert out["unmasked"].item() == pytest.approx(high)
    assert out["own_mask"].item() == pytest.approx(high)
    assert out["other_present_mask"].item() == pytest.approx(low)  # p_0(x m_1) and p_1(x m_0)
    assert out["absent_mask"].item() == pytest.approx(low)  # p_0(x m_2), p_1(x m_2)
    assert metric.absent_mask_count.item() == 2 and metric.other_present_mask_count.item() == 2


def test_class_specificity_matches_naive_loop_and_merges() -> None:
    gen = torch.Generator().manual_seed(1)
    net = tiny_classifier(4)
    images = torch.randn(5, 3, 16, 16, generator=gen, dtype=torch.float64)
    labels = (torch.rand(5, 4, generator=gen) < 0.5).double()
    labels[:, 0] = 1
    masks = torch.rand(5, 4, 16, 16, generator=gen, dtype=torch.float64)
    metric = ClassSpecificity(net, chunk_size=7)
    metric.update(images, masks, labels)
    sums = {"unmasked": [], "own_mask": [], "other_present_mask": [], "absent_mask": []}
    with torch.no_grad():
        for b in range(5):
            present = [c for c in range(4) if labels[b, c] > 0.5]
            clean = torch.sigmoid(net(images[b : b + 1]))[0]
            for t in present:
                sums["unmasked"].append(clean[t].item())
                for k in range(4):
                    p = torch.sigmoid(net((images[b] * masks[b, k]).unsqueeze(0)))[0, t].item()
                    key = "own_mask" if k == t else "other_present_mask" if k in present else "absent_mask"
                    sums[key].append(p)
    out = metric.compute()
    for key, values in sums.items():
        assert out[key].item() == pytest.approx(sum(values) / len(values), abs=1e-9), key
    halves = [ClassSpecificity(net), ClassSpecificity(net)]
    halves[0].update(images[:2], masks[:2], labels[:2])
    halves[1].update(images[2:], masks[2:], labels[2:])
    halves[0].merge_state(halves[1])
    for key, value in out.items():
        torch.testing.assert_close(halves[0].compute()[key], value)
    # without absent masks: fewer forward passes, the absent key is NaN
    present_only = ClassSpecificity(net, include_absent=False)
    present_only.update(images, masks, labels)
    assert present_only.compute()["own_mask"].item() == pytest.approx(out["own_mask"].item(), abs=1e-12)
    assert torch.isnan(present_only.compute()["absent_mask"])


def test_invalid_and_range_errors() -> None:
    images = torch.ones(1, 3, 8, 8)
    maps = torch.full((1, 1, 8, 8), 0.5)
    maps[0, 0, 0, 0] = float("nan")
    metric = SaliencyMetric(HalvesNet())
    metric.update(images, maps, torch.tensor([[0]]))
    out = metric.compute()
    assert out["invalid"].item() == 1 and torch.isfinite(out["saliency"])
    with pytest.raises(ValueError, match="normalise them first"):
        metric.update(images, maps * 3, torch.tensor([[0]]))
    with pytest.raises(ValueError, match="for every class"):
        ClassSpecificity(HalvesNet()).update(images, torch.ones(1, 2, 8, 8), torch.ones(1, 3))
    assert "classifier" not in dict(metric.named_modules()) and not list(metric.state_dict())
