"""RISE: mask bank, the saliency formula against a naive loop, localisation on a quadrant classifier."""

from __future__ import annotations

import math

import torch

from explainer.methods import build_method, rise_masks
from explainer.methods.rise import default_grid_size
from tests.methods.toys import QuadrantEnergyNet, noise_images, quadrant_mass


def test_mask_bank_follows_the_recipe() -> None:
    masks = rise_masks(400, grid_size=4, keep_prob=0.3, height=30, width=20, seed=1)
    assert masks.shape == (400, 30, 20)
    assert masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean().item() - 0.3) < 0.03  # bilinear upsampling keeps the keep probability
    # the same generator in the same order gives the grids and the shifts: rebuild one mask by hand
    gen = torch.Generator().manual_seed(1)
    grids = (torch.rand(400, 1, 4, 4, generator=gen) < 0.3).float()
    cell_h, cell_w = math.ceil(30 / 4), math.ceil(20 / 4)
    up = torch.nn.functional.interpolate(grids, size=(5 * cell_h, 5 * cell_w), mode="bilinear", align_corners=False)
    dy = torch.randint(0, cell_h, (400,), generator=gen)
    dx = torch.randint(0, cell_w, (400,), generator=gen)
    for i in (0, 7, 399):
        expected = up[i, 0, dy[i] : dy[i] + 30, dx[i] : dx[i] + 20]
        torch.testing.assert_close(masks[i], expected)


def test_default_grid_size() -> None:
    assert default_grid_size(224, 224) == 8
    assert default_grid_size(64, 64) == 8
    assert default_grid_size(32, 48) == 4
    assert default_grid_size(8, 8) == 2


def test_bank_is_seeded_reused_and_redrawn_on_change() -> None:
    net = QuadrantEnergyNet(16)
    a = build_method("rise", net, num_masks=32, seed=3)
    b = build_method("rise", net, num_masks=32, seed=3)
    c = build_method("rise", net, num_masks=32, seed=4)
    bank = a.mask_bank(16, 16)
    assert torch.equal(bank, b.mask_bank(16, 16))
    assert not torch.equal(bank, c.mask_bank(16, 16))
    assert a.mask_bank(16, 16) is bank  # reused, not redrawn
    assert a.mask_bank(16, 12).shape == (32, 16, 12)  # new size: redrawn
    a.num_masks = 40
    assert a.mask_bank(16, 12).shape == (40, 16, 12)
    assert "masks" not in a.state_dict()  # the bank is not saved with the method


def test_saliency_matches_a_naive_loop_for_every_class() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    images = torch.randn(2, 3, 12, 12)
    classes = torch.tensor([[2, 0], [1, -1]])
    for activation in ("sigmoid", "softmax"):
        method = build_method("rise", net, num_masks=20, keep_prob=0.4, activation=activation, batch_size=6)
        maps = method.attribute(images, classes)
        masks = method.mask_bank(12, 12)
        expected = torch.zeros(2, 3, 12, 12)
        with torch.no_grad():
            for i in range(masks.shape[0]):
                logits = net(images * masks[i])
                p = torch.sigmoid(logits) if activation == "sigmoid" else logits.softmax(1)
                expected += p[:, :, None, None] * masks[i]
        expected /= 20 * 0.4
        torch.testing.assert_close(maps[0], expected[0, [2, 0]], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(maps[1, 0], expected[1, 1], rtol=1e-5, atol=1e-6)
        assert not maps[1, 1].any()


def test_chunking_does_not_change_the_maps() -> None:
    net = QuadrantEnergyNet(16, 3)
    images = noise_images(3, 16)
    classes = torch.tensor([[0, 1], [1, 2], [2, 0]])
    one = build_method("rise", net, num_masks=50, batch_size=3).attribute(images, classes)
    many = build_method("rise", net, num_masks=50, batch_size=1000).attribute(images, classes)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-6)


def test_maps_concentrate_on_the_quadrant_the_class_looks_at() -> None:
    net = QuadrantEnergyNet(32)
    images = noise_images(2, 32)
    maps = build_method("rise", net, num_masks=1000).attribute(images, torch.tensor([[0, 1], [1, 0]]))
    # RISE maps carry a constant offset E[f]; measure the mass above the map's median
    centred = maps - maps.flatten(2).median(-1).values[..., None, None]
    assert (quadrant_mass(centred[:, 0], "tl")[0] > 0.7) and (quadrant_mass(centred[:, 1], "tl")[1] > 0.7)
    assert (quadrant_mass(centred[:, 1], "br")[0] > 0.7) and (quadrant_mass(centred[:, 0], "br")[1] > 0.7)
    h = 16
    assert maps[0, 0, :h, :h].mean() > maps[0, 0, h:, h:].mean() + 0.05
