"""Mask-network output options (explainer/nets/mask_output.py): hard-concrete masks with exact zeros, the cell
prior of per-cell protocol classes, their round trip through an export, and the contradictions refused."""

from __future__ import annotations

import pytest
import torch

from explainer.export import export_explainer, load
from explainer.modules.explainer_module import ExplainerModule
from explainer.nets import build_mask_net
from explainer.nets.mask_output import cell_prior_init, clipped_sigmoid, hard_concrete
from explainer.nets.masknets import transfer_class_heads
from tests.helpers import write_classifier_checkpoint


def test_hard_concrete_is_exactly_zero_and_one_beyond_the_stretch():
    logits = torch.tensor([-6.0, -2.5, -2.3, 0.0, 2.3, 2.5, 6.0])
    m = hard_concrete(logits, training=False)
    # sigmoid(S) * 1.2 - 0.1 crosses 0 at S = -log(11) = -2.398 and 1 at +2.398
    assert m.tolist()[:2] == [0.0, 0.0] and m.tolist()[-2:] == [1.0, 1.0]
    assert 0 < m[2] < 0.02 and m[3] == pytest.approx(0.5) and 0.98 < m[4] < 1
    torch.manual_seed(0)
    samples = hard_concrete(torch.zeros(20000), training=True)
    # a relaxed Bernoulli(0.5) at temperature 2/3: symmetric, with mass at both ends
    assert samples.mean() == pytest.approx(0.5, abs=0.02)
    assert 0.05 < (samples == 0).float().mean() < 0.25 and 0.05 < (samples == 1).float().mean() < 0.25


def test_the_network_output_stays_logits_whose_sigmoid_is_the_mask():
    torch.manual_seed(0)
    net = build_mask_net("unet", 3, width=4, depth=2, output="hard_concrete").eval()
    x = torch.randn(2, 3, 16, 16)
    plain = build_mask_net("unet", 3, width=4, depth=2)
    plain.load_state_dict(net.state_dict())
    expected = hard_concrete(plain.eval()(x), training=False)
    torch.testing.assert_close(net(x).sigmoid(), expected, atol=2e-6, rtol=0)
    net.train()
    net(x).sigmoid().mean().backward()
    assert net.head.weight.grad.abs().sum() > 0


def test_the_cell_prior_starts_each_per_cell_class_in_its_own_cell():
    prior = cell_prior_init(8, 2, 4.0)  # 2 classes per cell, 4 cells
    own = [(0, 0), (0, 1), (1, 0), (1, 1)]
    for index in range(8):
        r, c = own[index // 2]
        assert prior[index, r, c] == 0 and (prior[index] == -4).sum() == 3
    with pytest.raises(ValueError, match="not n\\^2 = 4 cells"):
        cell_prior_init(6, 2, 4.0)
    net = build_mask_net("unet", 8, width=4, depth=2, output="hard_concrete", cells=2).eval()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(1.0)  # a head that lights up everything
        masks = net(torch.randn(1, 3, 16, 16)).sigmoid()[0]
    assert masks[2, :8, 8:].min() > 0.7 and masks[2, 8:].max() < 1e-5 and masks[2, :8, :8].max() < 1e-5


def test_a_fine_tune_from_a_network_without_the_prior_starts_it_fresh():
    old = build_mask_net("unet", 2, width=4, depth=2)
    new = build_mask_net("unet", 8, width=4, depth=2, cells=2)
    state = transfer_class_heads(new, old.state_dict(), ["0", "1"], [f"cell{i}:{c}" for i in range(4) for c in "01"])
    new.load_state_dict(state)
    torch.testing.assert_close(new.cell_prior.data, cell_prior_init(8, 2, 4.0))
    back = transfer_class_heads(old, new.state_dict(), [f"cell{i}:{c}" for i in range(4) for c in "01"], ["0", "1"])
    old.load_state_dict(back)  # and a network without it drops it


def test_the_export_rebuilds_the_output_options(tmp_path):
    _, ckpt = write_classifier_checkpoint(tmp_path)
    kwargs = {"width": 4, "depth": 2, "output": "hard_concrete"}
    module = ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs=kwargs).eval()
    with torch.no_grad():
        module.mask_net.head.bias[0] = -20.0  # class 0 masks nothing
    x = torch.randn(2, 3, 32, 32)
    loaded = load(export_explainer(module, tmp_path / "export"))
    assert loaded.config["mask_net"]["kwargs"]["output"] == "hard_concrete"
    masks = loaded.explain(x)
    torch.testing.assert_close(masks, module(x).sigmoid())
    assert masks[:, 0].max() <= 1e-6 and masks[:, 1:].min() > 0  # exact (to 1e-6) zeros survive the round trip


def test_contradicting_options_are_refused_at_construction(tmp_path):
    _, ckpt = write_classifier_checkpoint(tmp_path)
    net = {"width": 4, "depth": 2}
    with pytest.raises(ValueError, match="no protocol is set"):
        ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs={**net, "cells": 2})
    with pytest.raises(ValueError, match="gridpg has no per-cell classes"):
        ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs={**net, "cells": 2}, protocol="gridpg")
    with pytest.raises(ValueError, match="differs from grid_size=3"):
        ExplainerModule(
            str(ckpt), num_classes=90, mask_net="unet", mask_net_kwargs={**net, "cells": 2}, protocol="difull",
            grid_size=3,
        )  # fmt: skip
    with pytest.raises(ValueError, match="unknown mask output 'relu'"):
        ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs={**net, "output": "relu"})
    one_logit = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(ValueError, match="outputs a single mask"):
        ExplainerModule(
            one_logit, num_classes=1, mask_net="unet", mask_net_kwargs=net, extra_losses={"class_deletion": 1}
        )
    module = ExplainerModule(
        str(ckpt), num_classes=40, mask_net="unet", mask_net_kwargs={**net, "cells": 2}, protocol="difull"
    )
    assert module.mask_net.cell_prior.shape == (40, 2, 2)


def test_clipped_cuts_the_floor_and_keeps_the_sigmoid_gradient():
    logits = torch.tensor([-6.0, -2.0, 0.0, 3.0, 8.0], requires_grad=True)
    m = clipped_sigmoid(logits, floor=0.2)
    expected = ((torch.sigmoid(logits) - 0.2).clamp(min=0) / 0.8).detach()
    torch.testing.assert_close(m.detach(), expected)
    assert m[0] == 0 and m[1] == 0 and 0 < m[2] < m[3] < m[4] < 1  # no plateau at the top
    m.sum().backward()
    torch.testing.assert_close(logits.grad, (torch.sigmoid(logits) * (1 - torch.sigmoid(logits)) / 0.8).detach())
    net = build_mask_net("unet", 3, width=4, depth=2, output="clipped", floor=0.2)
    with torch.no_grad():
        net.head.bias[0] = -20.0
    x = torch.randn(2, 3, 16, 16)
    out = net.train()(x)
    assert out[:, 0].sigmoid().max() <= 1e-6  # exact zeros (to 1e-6) in the forward pass
    out.sigmoid()[:, 0].sum().backward()
    assert net.head.bias.grad[0] != 0  # and still a gradient through the cut
