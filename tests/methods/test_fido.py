"""FIDO, BBMP and the in-fillers."""

from __future__ import annotations

import pytest
import torch

from explainer.methods import build_infill, build_method
from explainer.methods.common import class_log_odds
from explainer.methods.fido import default_mask_grid
from explainer.methods.infill import BlurInfill, LocalMeanInfill, MeanInfill, RandomInfill
from tests.helpers import tiny_net
from tests.methods.toys import QuadrantEnergyNet, noise_images

H = 16  # half of the 32-pixel toy images


def _inside_outside(maps: torch.Tensor) -> tuple[float, float]:
    inside = maps[..., :H, :H].mean().item()
    outside = (maps.sum() - maps[..., :H, :H].sum()).item() / (maps.numel() * 3 / 4)
    return inside, outside


@pytest.mark.parametrize("name", ["fido", "bbmp"])
def test_ssr_keeps_the_region_that_drives_the_class(name: str) -> None:
    net = QuadrantEnergyNet(32)
    maps = build_method(name, net, objective="ssr", infill="mean", iterations=60).attribute(
        noise_images(1, 32), torch.tensor([[0]])
    )
    inside, outside = _inside_outside(maps)  # the SSR map is the keep probability
    assert inside > 0.7 and outside < 0.3, (inside, outside)


def test_sdr_drops_the_region_that_drives_the_class() -> None:
    net = QuadrantEnergyNet(32)
    maps = build_method("fido", net, objective="sdr", infill="blur", iterations=60).attribute(
        noise_images(1, 32), torch.tensor([[0]])
    )
    inside, outside = _inside_outside(maps)  # the SDR map is the drop probability
    assert inside > 0.7 and outside < 0.3, (inside, outside)


@pytest.mark.parametrize("name,infill", [("fido", "local_mean"), ("bbmp", "blur")])
def test_batched_optimisation_equals_one_image_at_a_time(name: str, infill: str) -> None:
    torch.manual_seed(0)
    net = tiny_net(3)
    images = torch.randn(3, 3, 16, 16)
    classes = torch.tensor([[0, 2], [1, -1], [2, 0]])
    method = (
        build_method(name, net, infill=infill, iterations=6, samples=2, seed=5)
        if name == "fido"
        else build_method(name, net, infill=infill, iterations=6, seed=5)
    )
    batch = method.attribute(images, classes)
    for i in range(3):
        single = method.attribute(images[i : i + 1], classes[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], single, rtol=1e-4, atol=1e-5)


def test_fido_is_seeded() -> None:
    net = tiny_net(3)
    images, classes = torch.randn(1, 3, 16, 16), torch.tensor([[1]])
    a = build_method("fido", net, iterations=3, seed=0).attribute(images, classes)
    b = build_method("fido", net, iterations=3, seed=0).attribute(images, classes)
    c = build_method("fido", net, iterations=3, seed=1).attribute(images, classes)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_default_grid_scales_with_the_image() -> None:
    assert default_mask_grid(224, 224) == (56, 56)
    assert default_mask_grid(64, 64) == (16, 16)
    assert default_mask_grid(30, 17) == (8, 5)


def test_log_odds() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    targets = torch.tensor([0, 2])
    torch.testing.assert_close(class_log_odds(logits, targets, "sigmoid"), torch.tensor([2.0, 1.0]))
    p = logits.softmax(1)
    expected = torch.log(p[[0, 1], targets]) - torch.log(1 - p[[0, 1], targets])
    torch.testing.assert_close(class_log_odds(logits, targets, "softmax"), expected)
    with pytest.raises(ValueError, match="unknown activation"):
        class_log_odds(logits, targets, "relu")


def test_mean_and_blur_infills() -> None:
    x = torch.randn(2, 3, 16, 16)
    keep = torch.ones(2, 1, 16, 16)
    assert torch.equal(MeanInfill()(x, keep), torch.zeros_like(x))
    constant = torch.full((1, 3, 16, 16), 0.7)
    torch.testing.assert_close(BlurInfill()(constant, keep[:1]), constant)  # blur keeps a constant image
    blurred = BlurInfill()(x, keep)
    assert blurred.std() < x.std() * 0.8


def test_local_mean_infill_averages_kept_pixels() -> None:
    infill = LocalMeanInfill()
    assert infill.window_size(224) == 15 and infill.window_size(64) == 5 and infill.window_size(16) == 3
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    keep = torch.zeros(1, 1, 4, 4)
    keep[0, 0, 0, 0] = keep[0, 0, 1, 1] = 1  # kept values 0 and 5
    fill = infill(x, keep)  # 3 x 3 windows at 16 px
    assert fill[0, 0, 0, 1] == pytest.approx(2.5)  # window rows 0-1, cols 0-2: both kept pixels
    assert fill[0, 0, 2, 2] == pytest.approx(5.0)  # only (1, 1) is in reach
    assert fill[0, 0, 3, 3] == 0.0  # no kept pixel in reach: the mean colour


def test_random_infill_is_seeded_and_ignores_the_image() -> None:
    x = torch.randn(4, 3, 16, 16)
    keep = torch.zeros(4, 1, 16, 16)
    infill = RandomInfill()
    a = infill(x, keep, torch.Generator().manual_seed(0))
    b = infill(torch.zeros_like(x), keep, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    residual = a - a.mean(dim=(2, 3), keepdim=True)
    assert residual.std().item() == pytest.approx(0.2, rel=0.1)


def test_infills_get_no_gradient() -> None:
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    keep = torch.rand(1, 1, 16, 16, requires_grad=True)
    for name in ("mean", "zero", "blur", "local_mean", "random"):
        assert not build_infill(name)(x, keep).requires_grad
    with pytest.raises(ValueError, match="valid in-fillers: mean, zero, blur, local_mean, random"):
        build_infill("gan")
