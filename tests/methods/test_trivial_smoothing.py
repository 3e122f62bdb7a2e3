"""Reference maps (centre, uniform, oracle) and Gaussian smoothing."""

from __future__ import annotations

import math

import pytest
import torch

from explainer.methods import build_method, gaussian_smooth
from explainer.methods.trivial import box_masks
from tests.helpers import tiny_net


def test_centre_and_uniform() -> None:
    images = torch.zeros(2, 3, 9, 11)
    classes = torch.tensor([[0, 4], [1, -1]])
    centre = build_method("centre").attribute(images, classes)
    assert centre.shape == (2, 2, 9, 11)
    assert centre[0, 0, 4, 5] == 1.0 and centre[0, 0].argmax() == 4 * 11 + 5
    assert centre[0, 0, 0, 5].item() == pytest.approx(math.exp(-0.5 * (4 / (0.25 * 9)) ** 2))
    assert not centre[1, 1].any()
    uniform = build_method("uniform").attribute(images, classes)
    assert uniform.sum() == 3 * 9 * 11 and not uniform[1, 1].any()


def test_oracle_returns_the_ground_truth_of_each_class() -> None:
    masks = torch.rand(2, 5, 8, 8) > 0.5
    classes = torch.tensor([[3, 0], [4, -1]])
    maps = build_method("oracle").attribute(torch.zeros(2, 3, 8, 8), classes, masks=masks)
    assert torch.equal(maps[0, 0], masks[0, 3].float()) and torch.equal(maps[0, 1], masks[0, 0].float())
    assert torch.equal(maps[1, 0], masks[1, 4].float()) and not maps[1, 1].any()
    with pytest.raises(ValueError, match="masks=batch.masks"):
        build_method("oracle").attribute(torch.zeros(2, 3, 8, 8), classes)
    with pytest.raises(ValueError, match=r"masks must be \[B, C, H, W\]"):
        build_method("oracle").attribute(torch.zeros(2, 3, 8, 8), classes, masks=masks[:, :, :4])


def test_oracle_from_boxes() -> None:
    boxes = [torch.tensor([[0.0, 0.0, 2.0, 3.0], [4.0, 4.0, 6.0, 6.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([1, 1]), torch.zeros(0, dtype=torch.long)]
    gt = box_masks(boxes, labels, num_classes=3, size=(8, 8))
    expected = torch.zeros(8, 8)
    expected[0:3, 0:2] = 1  # pixel centres (x + 0.5, y + 0.5) inside [0, 2] x [0, 3]
    expected[4:6, 4:6] = 1
    assert torch.equal(gt[0, 1], expected) and not gt[0, 0].any() and not gt[1].any()
    maps = build_method("oracle").attribute(
        torch.zeros(2, 3, 8, 8), torch.tensor([[1], [2]]), boxes=boxes, box_labels=labels
    )
    assert torch.equal(maps[0, 0], expected) and not maps[1].any()


def test_smoothing_kernel_and_mass() -> None:
    maps = torch.zeros(2, 3, 32, 32)
    maps[0, 1, 10, 12] = 2.0
    maps[1, 0, 14:18, 9:20] = torch.randn(4, 11)
    smoothed = gaussian_smooth(maps, kernel_size=9)
    # mass away from the borders is preserved
    torch.testing.assert_close(smoothed.sum(dim=(-2, -1)), maps.sum(dim=(-2, -1)), rtol=1e-5, atol=1e-5)
    # an impulse becomes the normalised 9 x 9 Gaussian with sigma 9 / 4
    d = torch.arange(-4.0, 5.0)
    g = torch.exp(-0.5 * (d / 2.25) ** 2)
    kernel = g[:, None] * g[None, :] / g.sum() ** 2
    torch.testing.assert_close(smoothed[0, 1, 6:15, 8:17], 2.0 * kernel)
    assert smoothed[0, 1, 10, 17] == 0  # nothing beyond the kernel
    assert torch.equal(gaussian_smooth(maps, 1), maps)
    with pytest.raises(ValueError, match="odd"):
        gaussian_smooth(maps, 4)


def test_smooth_wraps_any_method() -> None:
    torch.manual_seed(0)
    net = tiny_net(3)
    images, classes = torch.randn(2, 3, 16, 16), torch.tensor([[0, 2], [1, -1]])
    wrapped = build_method("smooth", net, method="integrated_gradients", kernel_size=5, steps=4)
    assert wrapped.inner.steps == 4 and wrapped.needs_grad
    plain = build_method("integrated_gradients", net, steps=4).attribute(images, classes)
    torch.testing.assert_close(wrapped.attribute(images, classes), gaussian_smooth(plain, 5))
    assert not wrapped.attribute(images, classes)[1, 1].any()
    with pytest.raises(ValueError, match="odd"):
        build_method("smooth", net, method="gradient", kernel_size=6)
