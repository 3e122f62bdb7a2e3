"""Gradient methods against hand-written autograd references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explainer.methods import build_method
from tests.helpers import tiny_net
from tests.methods.toys import QuadrantEnergyNet

pytest.importorskip("captum")


def _setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = tiny_net(3).eval()
    images = torch.randn(2, 3, 12, 12)
    classes = torch.tensor([[2, 0], [1, -1]])
    return net, images, classes


def _grad(net: nn.Module, image: torch.Tensor, cls: int) -> torch.Tensor:
    x = image[None].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(x)[0, cls], x)
    return g[0]


def test_gradient_and_input_x_gradient_match_autograd() -> None:
    net, images, classes = _setup()
    grad_maps = build_method("gradient", net).attribute(images, classes)
    ixg_maps = build_method("input_x_gradient", net, batch_size=1).attribute(images, classes)
    signed = build_method("gradient", net, absolute=False).attribute(images, classes)
    for b, k in [(0, 0), (0, 1), (1, 0)]:
        g = _grad(net, images[b], int(classes[b, k]))
        torch.testing.assert_close(grad_maps[b, k], g.abs().sum(0))
        torch.testing.assert_close(signed[b, k], g.sum(0))
        torch.testing.assert_close(ixg_maps[b, k], (g * images[b]).sum(0))
    assert (grad_maps >= 0).all() and (ixg_maps < 0).any()  # input x gradient keeps its sign
    assert not grad_maps[1, 1].any()


def test_integrated_gradients_is_exact_on_a_quadratic_model() -> None:
    # logit = sum W x0^2 + b: the gradient along the path a*x is 2 a W x0, whose integral is W x0^2
    net = QuadrantEnergyNet(8, 2, gain=4.0)
    images = torch.randn(2, 3, 8, 8)
    maps = build_method("integrated_gradients", net, steps=8).attribute(images, torch.tensor([[0, 1], [1, 0]]))
    with torch.no_grad():
        expected = net.weight[None] * images[:, :1] ** 2  # [B, C, H, W]
    torch.testing.assert_close(maps[0], expected[0, [0, 1]], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(maps[1], expected[1, [1, 0]], rtol=1e-4, atol=1e-6)


def test_integrated_gradients_completeness_on_a_cnn() -> None:
    net, images, classes = _setup()
    maps = build_method("integrated_gradients", net, steps=64).attribute(images, classes)
    with torch.no_grad():
        delta = net(images) - net(torch.zeros_like(images))
    for b, k in [(0, 0), (0, 1), (1, 0)]:
        total = maps[b, k].sum()
        expected = delta[b, classes[b, k]]
        assert abs(total - expected) <= 0.02 * expected.abs() + 1e-4


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        return grad.clamp_min(0) * (x > 0).to(grad.dtype)


class _GuidedModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GuidedReLU.apply(x)


def test_guided_backprop_matches_a_guided_relu_network() -> None:
    net, images, classes = _setup()
    maps = build_method("guided_backprop", net).attribute(images, classes)
    # reference: the same network with every ReLU replaced by a ReLU whose backward passes only positive
    # gradients where the input was positive
    guided = tiny_net(3)
    guided.load_state_dict(net.state_dict())
    guided.eval()
    for seq in (guided.features,):
        for i, m in enumerate(seq):
            if isinstance(m, nn.ReLU):
                seq[i] = _GuidedModule()
    for b, k in [(0, 0), (0, 1), (1, 0)]:
        g = _grad(guided, images[b], int(classes[b, k]))
        torch.testing.assert_close(maps[b, k], g.sum(0))
    plain = build_method("input_x_gradient", net).attribute(images, classes)
    assert not torch.allclose(maps, plain)
    assert not any(m._backward_hooks or m._forward_hooks or m._forward_pre_hooks for m in net.modules())
