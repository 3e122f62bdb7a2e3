"""Every registered method honours the shared interface."""

from __future__ import annotations

import pytest
import torch

from explainer.methods import available_methods, build_method
from tests.helpers import tiny_net

SIZE = 32

# fast settings; the defaults are exercised by the benchmark
FAST = {
    "rise": dict(num_masks=64, batch_size=50),
    "fido": dict(iterations=3, samples=2),
    "bbmp": dict(iterations=3),
    "extremal": dict(iterations=3, areas=[0.1, 0.3]),
    "integrated_gradients": dict(steps=4),
    "smooth": dict(method="input_x_gradient", kernel_size=5),
}
NO_CLASSIFIER = {"centre", "uniform", "oracle"}


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, SIZE, SIZE, generator=gen)
    classes = torch.tensor([[1, 3], [2, -1]])
    masks = torch.rand(2, 4, SIZE, SIZE, generator=gen) > 0.5
    return images, classes, masks


def test_every_method_is_registered() -> None:
    expected = {"rise", "fido", "bbmp", "gradcam", "gradcam++", "gradient", "input_x_gradient",
                "integrated_gradients", "guided_backprop", "extremal", "centre", "uniform", "oracle", "smooth"}
    assert expected <= set(available_methods())


@pytest.mark.parametrize("name", sorted(set(FAST) | {"gradcam", "gradcam++", "gradient", "input_x_gradient",
                                                     "guided_backprop", "centre", "uniform", "oracle"}))
def test_interface(name: str) -> None:
    """Shape, zero padding maps, determinism, caller's no_grad, untouched classifier."""
    torch.manual_seed(0)
    net = tiny_net(4)  # a plain, trainable classifier in training mode: the worst case
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    method = build_method(name, None if name in NO_CLASSIFIER else net, **FAST.get(name, {}))
    images, classes, masks = _inputs()
    extra = {"masks": masks} if name == "oracle" else {}
    with torch.no_grad():  # methods that need gradients enable them themselves
        first = method.attribute(images, classes, **extra)
        second = method(images, classes, **extra)
    assert first.shape == (2, 2, SIZE, SIZE)
    assert first.dtype == images.dtype
    assert torch.isfinite(first).all()
    assert torch.equal(first[1, 1], torch.zeros(SIZE, SIZE))
    assert first[0].abs().sum() > 0
    torch.testing.assert_close(first, second, rtol=0, atol=1e-6)
    assert not first.requires_grad
    assert all(p.grad is None for p in net.parameters())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert net.training and all(m.training for m in net.modules())  # training flags restored


def test_unknown_method_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid methods: .*gradcam.*rise"):
        build_method("grad-cam", tiny_net(3))


def test_bad_classes_are_rejected() -> None:
    method = build_method("gradient", tiny_net(3))
    with pytest.raises(ValueError, match=r"classes must be \[B, K\]"):
        method.attribute(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        method.attribute(torch.zeros(2, 3, 8, 8), torch.zeros(2, 1))


def test_methods_that_query_the_classifier_require_one() -> None:
    for name in ("rise", "fido", "bbmp", "gradcam", "gradient", "extremal"):
        with pytest.raises(ValueError, match="classifier"):
            build_method(name, None)


def test_all_padding_gives_zero_maps() -> None:
    method = build_method("gradcam", tiny_net(3))
    maps = method.attribute(torch.randn(2, 3, 16, 16), torch.full((2, 3), -1))
    assert maps.shape == (2, 3, 16, 16) and not maps.any()
