"""Every registered method honours the shared interface."""

from __future__ import annotations

import pytest
import torch

from explainer.methods import COSTS, LAYER_FORMS, available_methods, build_method, method_class
from explainer.nets.masknets import build_mask_net
from explainer.nets.prototypes import PrototypeLayer, pooled_linear_head
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


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, SIZE, SIZE, generator=gen)
    classes = torch.tensor([[1, 3], [2, -1]])
    masks = torch.rand(2, 4, SIZE, SIZE, generator=gen) > 0.5
    return images, classes, masks


def test_every_method_is_registered() -> None:
    expected = {
        "rise",
        "fido",
        "bbmp",
        "gradcam",
        "gradcam++",
        "gradient",
        "input_x_gradient",
        "integrated_gradients",
        "guided_backprop",
        "extremal",
        "centre",
        "uniform",
        "oracle",
        "smooth",
    }
    assert expected <= set(available_methods())


def _built_in() -> list[str]:
    """Every method this package registers (tests may register their own)."""
    return [n for n in available_methods() if method_class(n).__module__.startswith("explainer.")]


def _options(name: str, net: torch.nn.Module) -> dict:
    """Fast settings, and what a learned method needs: a mask network, a fitted prototype head."""
    if name == "explainer":
        return {"model": build_mask_net("unet", 4, width=4, depth=2)}
    if name == "rtsal":
        return {"model": build_mask_net("selector_unet", 4, backbone="digitnet", width=4, probe_size=32)}
    if name == "fastshap":
        kwargs = {"grid": 4, "body": "unet", "body_kwargs": {"width": 4, "depth": 2}, "zero_head": False}
        net = build_mask_net("shapley_cells", 4, **kwargs)
        return {"model": net.requires_grad_(False)}
    if name == "prototypes":
        weight, bias = pooled_linear_head(net)
        return {"prototypes": PrototypeLayer(4, 2, weight.shape[1], weight=weight, bias=bias)}
    return FAST.get(name, {})


@pytest.mark.parametrize("name", _built_in())
def test_interface(name: str) -> None:
    """Shape, zero padding maps, determinism, caller's no_grad, untouched classifier; every registered method."""
    torch.manual_seed(0)
    net = tiny_net(4)  # a plain, trainable classifier in training mode: the worst case
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    method = build_method(name, net if method_class(name).needs_classifier else None, **_options(name, net))
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


def test_methods_declare_what_they_can_do() -> None:
    """Capabilities live on the classes: one name each, a known cost class and layer forms."""
    for name in _built_in():
        cls = method_class(name)
        assert cls.name == name and cls.cost in COSTS and set(cls.layer_forms) <= set(LAYER_FORMS)
    assert {n for n in _built_in() if not method_class(n).needs_classifier} == {
        "centre",
        "uniform",
        "oracle",
        "explainer",
        "fastshap",
        "rtsal",
    }
    assert method_class("gradcam").layer_forms == ("middle", "final")
    assert method_class("explainer").value_option == "path" and method_class("explainer").unit_range


def test_a_name_is_registered_once() -> None:
    from explainer.methods import register_method
    from explainer.methods.trivial import CentreBaseline

    class Another(CentreBaseline):
        pass

    with pytest.raises(ValueError, match="'centre' is registered twice"):
        register_method(Another)
