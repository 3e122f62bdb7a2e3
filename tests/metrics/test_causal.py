"""Deletion / insertion: RISE's blur kernel, the trapezoid rule, and a one-step-at-a-time loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explainer.metrics import (
    InsertionDeletion,
    insertion_deletion_curves,
    rise_blur,
    rise_blur_kernel,
    top_classes,
    trapezoid_auc,
)
from tests.helpers import tiny_net

ndimage = pytest.importorskip("scipy.ndimage")


def test_blur_kernel_is_folded_gaussian() -> None:
    kernel = rise_blur_kernel(11, 5.0)
    assert kernel.shape == (11, 11)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (kernel[0, 0] / kernel[5, 5]).item() == pytest.approx(0.88, abs=0.005)  # nearly a box blur
    # independent oracle: a Gaussian filter of a one-pixel impulse under reflecting boundaries
    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1.0
    np.testing.assert_allclose(kernel.numpy(), ndimage.gaussian_filter(impulse, 5.0), atol=1e-12)


def test_blur_is_per_channel_with_zero_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 9, 13, generator=gen, dtype=torch.float64)
    kernel = rise_blur_kernel().numpy()
    ours = rise_blur(images)
    for b in range(2):
        for c in range(3):
            ref = ndimage.convolve(images[b, c].numpy(), kernel, mode="constant", cval=0.0)
            np.testing.assert_allclose(ours[b, c].numpy(), ref, atol=1e-12)


def test_trapezoid_rule() -> None:
    assert trapezoid_auc(torch.tensor([1.0, 0.5, 0.0])).item() == pytest.approx(0.5)
    assert trapezoid_auc(torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0])).item() == pytest.approx(0.6)


def naive_aucs(net, images, maps, classes, step, activation):
    """One pair, one step, one forward pass of one image at a time."""
    height, width = images.shape[-2:]
    pixels = height * width
    steps = math.ceil(pixels / step)
    up = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
    kernel = rise_blur_kernel().numpy()
    out = {"deletion": [], "insertion": []}
    for b in range(images.shape[0]):
        blurred = torch.from_numpy(
            np.stack([ndimage.convolve(images[b, c].numpy(), kernel, mode="constant", cval=0.0) for c in range(3)])
        )
        for k in range(classes.shape[1]):
            cls = int(classes[b, k])
            if cls < 0:
                continue
            order = np.argsort(-up[b, k].numpy().ravel(), kind="stable")
            for mode in ("deletion", "insertion"):
                scores = []
                for i in range(steps + 1):
                    top = torch.from_numpy(order[: min(i * step, pixels)].copy())
                    if mode == "deletion":
                        img = images[b].clone().view(3, -1)
                        img[:, top] = 0.0
                    else:
                        img = blurred.clone().view(3, -1)
                        img[:, top] = images[b].reshape(3, -1)[:, top]
                    with torch.no_grad():
                        logits = net(img.view(1, 3, height, width))[0]
                    probs = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, 0)
                    scores.append(probs[cls].item())
                auc = sum((scores[i] + scores[i + 1]) / 2 for i in range(steps)) / steps
                out[mode].append(auc)
    return out


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_matches_naive_loop(activation: str) -> None:
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    net = tiny_net(4).double().eval()
    images = torch.randn(3, 3, 12, 12, generator=gen, dtype=torch.float64)
    maps = torch.rand(3, 2, 6, 6, generator=gen, dtype=torch.float64)
    classes = torch.tensor([[0, 3], [2, -1], [1, 1]])
    metric = InsertionDeletion(net, step=10, activation=activation, chunk_size=7)  # 144 px: 15 steps, uneven
    metric.update(images, maps, classes)
    reference = naive_aucs(net, images, maps, classes, 10, activation)
    out = metric.compute()
    assert out["samples"].item() == 5
    for mode in ("deletion", "insertion"):
        assert out[mode].item() == pytest.approx(np.mean(reference[mode]), abs=1e-6)
    curves = insertion_deletion_curves(net, images, maps, classes, step=10, activation=activation, chunk_size=50)
    aucs = trapezoid_auc(curves["deletion"])
    assert torch.isnan(aucs[1, 1]) and curves["deletion"].shape == (3, 2, 16)
    np.testing.assert_allclose(aucs[classes >= 0].numpy(), reference["deletion"], atol=1e-10)


def test_curve_end_points_and_default_step() -> None:
    torch.manual_seed(0)
    net = tiny_net(3).double().eval()
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    maps = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    classes = top_classes(net, images)
    curves = insertion_deletion_curves(net, images, maps, classes)
    assert curves["deletion"].shape == (2, 1, 9)  # default step = width: 8 steps
    with torch.no_grad():
        clean = torch.sigmoid(net(images)).gather(1, classes)[:, 0]
        blank = torch.sigmoid(net(torch.zeros_like(images))).gather(1, classes)[:, 0]
        blurred = torch.sigmoid(net(rise_blur(images))).gather(1, classes)[:, 0]
    torch.testing.assert_close(curves["deletion"][:, 0, 0], clean)
    torch.testing.assert_close(curves["deletion"][:, 0, -1], blank)
    torch.testing.assert_close(curves["insertion"][:, 0, 0], blurred)
    torch.testing.assert_close(curves["insertion"][:, 0, -1], clean)


def test_merge_state_and_invalid_maps() -> None:
    torch.manual_seed(0)
    net = tiny_net(3).double().eval()
    images = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    maps = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    maps[1] = 0.5  # constant: no ranking
    maps[2, 0, 0, 0] = float("nan")
    classes = torch.tensor([[0], [1], [2], [0]])
    whole = InsertionDeletion(net, step=16)
    whole.update(images, maps, classes)
    out = whole.compute()
    assert out["invalid"].item() == 2 and torch.isfinite(out["deletion"]) and torch.isfinite(out["insertion"])
    halves = [InsertionDeletion(net, step=16), InsertionDeletion(net, step=16)]
    halves[0].update(images[:2], maps[:2], classes[:2])
    halves[1].update(images[2:], maps[2:], classes[2:])
    halves[0].merge_state(halves[1])
    for key, value in out.items():
        torch.testing.assert_close(halves[0].compute()[key], value)
    only = InsertionDeletion(net, step=16, modes=("deletion",))
    only.update(images, maps, classes)
    assert set(only.compute()) == {"deletion", "samples", "invalid"}
    assert only.compute()["deletion"].item() == pytest.approx(out["deletion"].item(), abs=1e-12)


def rise_causal_reference(net, image: np.ndarray, explanation: np.ndarray, mode: str, step: int) -> float:
    """RISE's ``CausalMetric.single_run`` (``evaluation.py``) restated in NumPy for one image.

    The class is the top prediction on the clean image, the model's output a softmax, the ranking
    ``flip(argsort(explanation))`` with a stable argsort, pixels changed ``step`` at a time by editing a
    NumPy view in place, the substrate zeros (deletion) or RISE's blur (``gkern(11, 5)`` applied like
    ``conv2d(padding=5)``: a correlation with zero padding), and RISE's ``auc``.
    """
    channels, height, width = image.shape
    hw = height * width

    def probs(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(torch.from_numpy(x)[None]), 1)[0].numpy()

    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1.0
    kernel = ndimage.gaussian_filter(impulse, 5.0)
    blurred = np.stack([ndimage.correlate(image[c], kernel, mode="constant", cval=0.0) for c in range(channels)])
    cls = int(np.argmax(probs(image)))
    n_steps = (hw + step - 1) // step
    start, finish = (image.copy(), np.zeros_like(image)) if mode == "del" else (blurred, image.copy())
    salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1, kind="stable"), axis=-1)
    scores = np.empty(n_steps + 1)
    for i in range(n_steps + 1):
        scores[i] = probs(start)[cls]
        if i < n_steps:
            coords = salient_order[:, step * i : step * (i + 1)]
            start.reshape(1, channels, hw)[0, :, coords] = finish.reshape(1, channels, hw)[0, :, coords]
    return float((scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1))


def plateau_maps(gen: torch.Generator, n: int, size: tuple[int, int]) -> torch.Tensor:
    """Maps with ties: three levels, a uniform map, a binary map, a map with one peak on a flat floor."""
    maps = torch.randint(0, 3, (n, 1, *size), generator=gen).double() / 2
    maps[1] = 0.25
    maps[2] = (torch.rand(1, *size, generator=gen) < 0.3).double()
    maps[3] = 0.0
    maps[3, 0, 5, 7] = 1.0
    return maps


def plateau_case(seed: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Generator]:
    """A tiny float64 classifier, four 12 x 12 images and maps with plateaus (ties), and the generator."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(0)
    net = tiny_net(4).double().eval()
    images = torch.randn(4, 3, 12, 12, generator=gen, dtype=torch.float64)
    return net, images, plateau_maps(gen, 4, (12, 12)), gen


def test_rise_tie_order_matches_rise_reference() -> None:
    net, images, maps, _ = plateau_case(2)
    classes = top_classes(net, images)
    curves = insertion_deletion_curves(net, images, maps, classes, step=10, activation="softmax", chunk_size=13)
    for mode, key in (("del", "deletion"), ("ins", "insertion")):
        ours = trapezoid_auc(curves[key])[:, 0].numpy()
        reference = [rise_causal_reference(net, images[b].numpy(), maps[b, 0].numpy(), mode, 10) for b in range(4)]
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)
    metric = InsertionDeletion(net, step=10, activation="softmax")
    metric.update(images, maps, classes)
    out = metric.compute()
    assert out["invalid"].item() == 1  # the uniform map, ranked last pixel first as RISE does
    reference = [rise_causal_reference(net, images[b].numpy(), maps[b, 0].numpy(), "del", 10) for b in range(4)]
    assert out["deletion"].item() == pytest.approx(np.mean(reference), abs=1e-12)


def test_numpy_default_argsort_keeps_a_uniform_map_in_order() -> None:
    # RISE calls NumPy's default argsort; on a uniform map it returns row-major order (so RISE changes the
    # last pixel first), which "rise" reproduces; on maps with plateaus only the stable sort is fixed
    flat = np.full(224 * 224, 0.5)
    np.testing.assert_array_equal(np.argsort(flat), np.arange(flat.size))


def test_raster_tie_order_reproduces_the_previous_ranking() -> None:
    net, images, maps, gen = plateau_case(3)
    classes = torch.tensor([[0], [1], [2], [3]])
    raster = InsertionDeletion(net, step=10, tie_order="raster")
    raster.update(images, maps, classes)
    reference = naive_aucs(net, images, maps, classes, 10, "sigmoid")  # stable descending sort: raster ties
    for mode in ("deletion", "insertion"):
        assert raster.compute()[mode].item() == pytest.approx(np.mean(reference[mode]), abs=1e-12)
    rise = InsertionDeletion(net, step=10)
    rise.update(images, maps, classes)
    assert rise.compute()["deletion"].item() != pytest.approx(raster.compute()["deletion"].item(), abs=1e-6)
    # without ties the two orders agree
    smooth = torch.rand(4, 1, 12, 12, generator=gen, dtype=torch.float64)
    a = insertion_deletion_curves(net, images, smooth, classes, step=10, tie_order="rise")
    b = insertion_deletion_curves(net, images, smooth, classes, step=10, tie_order="raster")
    for mode in ("deletion", "insertion"):
        torch.testing.assert_close(a[mode], b[mode], rtol=0, atol=0)


def test_unknown_tie_order_is_rejected() -> None:
    net = tiny_net(2).double().eval()
    with pytest.raises(ValueError, match=r"unknown tie_order 'reverse'; use one of \('rise', 'raster'\)"):
        InsertionDeletion(net, tie_order="reverse")
    with pytest.raises(ValueError, match="unknown tie_order"):
        insertion_deletion_curves(
            net, torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4), torch.tensor([[0]]), tie_order="row-major"
        )


def test_forward_gives_batch_values_and_accumulates() -> None:
    torch.manual_seed(0)
    net = tiny_net(3).double().eval()
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(5, 3, 8, 8, generator=gen, dtype=torch.float64)
    maps = torch.rand(5, 2, 8, 8, generator=gen, dtype=torch.float64)
    maps[1, 0] = 0.5  # constant: invalid
    classes = torch.tensor([[0, 1], [2, -1], [1, 0], [0, -1], [2, 2]])
    whole = InsertionDeletion(net, step=16)
    whole.update(images, maps, classes)
    streamed = InsertionDeletion(net, step=16)
    for rows in (slice(0, 2), slice(2, 5)):
        alone = InsertionDeletion(net, step=16)
        alone.update(images[rows], maps[rows], classes[rows])
        batch_values = streamed(images[rows], maps[rows], classes[rows])
        for key, value in alone.compute().items():
            torch.testing.assert_close(batch_values[key], value)
    for key, value in whole.compute().items():
        torch.testing.assert_close(streamed.compute()[key], value)
    assert streamed.compute()["samples"].item() == 8 and streamed.compute()["invalid"].item() == 1
