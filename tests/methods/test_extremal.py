"""Extremal perturbations: smooth mask, blur pyramid, area constraint, localisation."""

from __future__ import annotations

import math

import pytest
import torch

from explainer.methods import BlurPyramid, SmoothMask, build_method
from explainer.methods.extremal import area_loss
from explainer.ops import gaussian_blur
from tests.methods.toys import QuadrantEnergyNet, noise_images, quadrant_mass


def test_smooth_mask_matches_a_naive_loop_at_the_grid_points() -> None:
    gen = torch.Generator().manual_seed(0)
    smooth = SmoothMask(stride=2, sigma=3.0, temperature=0.05)
    params = torch.rand(2, 1, 5, 6, generator=gen)
    grid = smooth.grid_values(params)
    r = smooth.reach
    for n in range(2):
        for i in range(5):
            for j in range(6):
                values = []
                for di in range(-r, r + 1):
                    for dj in range(-r, r + 1):
                        dist2 = (di * 2) ** 2 + (dj * 2) ** 2
                        if dist2 > (2 * 3.0) ** 2:
                            values.append(0.0)
                            continue
                        # beyond the border the grid repeats its border values
                        p = params[n, 0, min(max(i + di, 0), 4), min(max(j + dj, 0), 5)].item()
                        values.append(p * math.exp(-dist2 / (2 * 9.0)))
                v = torch.tensor(values)
                expected = (torch.softmax(v / 0.05, 0) * v).sum()
                assert grid[n, 0, i, j].item() == pytest.approx(expected.item(), abs=1e-5)


def test_smooth_mask_shape_flatness_and_interpolation() -> None:
    smooth = SmoothMask(stride=3, sigma=9.0)
    gh, gw = smooth.grid_shape(20, 14)
    assert (gh - 1) * 3 + 1 >= 20 and (gw - 1) * 3 + 1 >= 14
    flat = smooth(torch.full((1, 1, gh, gw), 0.7), (20, 14))
    assert flat.shape == (1, 1, 20, 14)
    torch.testing.assert_close(flat, torch.full_like(flat, flat[0, 0, 0, 0].item()))
    params = torch.rand(1, 1, gh, gw)
    mask = smooth(params, (20, 14))
    torch.testing.assert_close(mask[0, 0, ::3, ::3], smooth.grid_values(params)[0, 0, :7, :5])
    assert mask.min() >= 0 and mask.max() <= 1


def test_blur_pyramid_levels_and_interpolation() -> None:
    x = torch.randn(2, 3, 16, 16)
    perturb = BlurPyramid(max_sigma=3.0, levels=3)
    pyramid = perturb.pyramid(x)
    assert pyramid.shape == (2, 3, 3, 16, 16)
    torch.testing.assert_close(pyramid[:, 0], gaussian_blur(x, 3.0))
    torch.testing.assert_close(pyramid[:, 1], gaussian_blur(x, 1.5))
    torch.testing.assert_close(pyramid[:, 2], x)
    ones = torch.ones(2, 1, 16, 16)
    torch.testing.assert_close(perturb(pyramid, ones), x)
    torch.testing.assert_close(perturb(pyramid, 0 * ones), pyramid[:, 0])
    torch.testing.assert_close(perturb(pyramid, 0.75 * ones), 0.5 * pyramid[:, 1] + 0.5 * pyramid[:, 2])


def test_area_loss_by_hand() -> None:
    masks = torch.tensor([[[0.9, 0.1], [0.2, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])
    areas = torch.tensor([0.25, 0.5])
    # row 0: sorted 0, 0.1, 0.2, 0.9 against 0, 0, 0, 1; row 1: exact
    expected = torch.tensor([(0.01 + 0.04 + 0.01) / 4, 0.0])
    torch.testing.assert_close(area_loss(masks, areas), expected)


def test_preserve_masks_find_the_quadrant_with_the_requested_area() -> None:
    net = QuadrantEnergyNet(32, gain=1000.0)  # evidence strong enough to beat the area term from the start
    images = noise_images(1, 32)
    method = build_method("extremal", net, areas=[0.25], iterations=50)
    maps = method.attribute(images, torch.tensor([[0, 1]]))
    assert quadrant_mass(maps[0, 0], "tl") > 0.7
    assert quadrant_mass(maps[0, 1], "br") > 0.7
    assert maps[0].mean(dim=(1, 2)).sub(0.25).abs().max() < 0.06  # the area constraint holds


def test_maps_sum_over_areas_and_batches_do_not_interact() -> None:
    net = QuadrantEnergyNet(16, 3, gain=100.0)
    images = noise_images(2, 16)
    classes = torch.tensor([[0, 1], [2, -1]])
    two = build_method("extremal", net, areas=[0.1, 0.3], iterations=4, batch_size=3)
    maps = two.attribute(images, classes)
    total = sum(build_method("extremal", net, areas=[a], iterations=4).attribute(images, classes) for a in (0.1, 0.3))
    torch.testing.assert_close(maps, total, rtol=1e-5, atol=1e-6)
    single = two.attribute(images[1:], classes[1:])
    torch.testing.assert_close(maps[1:], single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["delete", "dual"])
def test_other_variants_run(variant: str) -> None:
    net = QuadrantEnergyNet(16, gain=100.0)
    maps = build_method("extremal", net, variant=variant, areas=[0.2], iterations=3).attribute(
        noise_images(1, 16), torch.tensor([[0]])
    )
    assert maps.shape == (1, 1, 16, 16) and torch.isfinite(maps).all()


def test_bad_options() -> None:
    net = QuadrantEnergyNet(16)
    with pytest.raises(ValueError, match="variant"):
        build_method("extremal", net, variant="keep")
    with pytest.raises(ValueError, match="areas"):
        build_method("extremal", net, areas=[1.5])
