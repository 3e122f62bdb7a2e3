"""Real-time saliency: the class selector, the objective, training on the shared loop, export and evaluation."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

import explainer
from explainer.callbacks import ExplainerMetrics, ExportExplainer, MaskPanel
from explainer.data.digits import DigitScenesDataModule
from explainer.losses import SaliencyWeights, real_time_saliency_loss
from explainer.methods import build_method
from explainer.modules import RealTimeSaliencyModule
from explainer.modules.rtsal import sample_selection
from explainer.nets import build_mask_net
from tests.helpers import write_classifier_checkpoint

NET = {"mask_net": "selector_unet", "mask_net_kwargs": {"backbone": "digitnet", "width": 8, "probe_size": 32}}


def _dm():
    return DigitScenesDataModule(image_size=32, train_scenes=16, val_scenes=8, test_scenes=8, batch_size=8)


@pytest.fixture
def classifier_ckpt(tmp_path):
    return write_classifier_checkpoint(tmp_path)[1]


def test_the_selected_mask_is_that_class_channel_of_all_masks():
    torch.manual_seed(0)
    net = build_mask_net("selector_unet", 5, backbone="digitnet", width=8, probe_size=32).eval()
    with torch.no_grad():  # a decisive selector (at initialisation the gate is about 0.5 for every class)
        net.selector.weight.mul_(1000)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        every = net(x)
        chosen = net(x, selector=torch.tensor([4, 0, 2]))
    assert every.shape == (3, 5, 32, 32) and chosen.shape == (3, 1, 32, 32)
    torch.testing.assert_close(chosen[:, 0], every[torch.arange(3), torch.tensor([4, 0, 2])], atol=1e-5, rtol=0)
    assert not torch.allclose(every[:, 0], every[:, 1], atol=1e-5, rtol=0)  # the selector changes the mask
    with pytest.raises(ValueError, match=r"class selector\(s\) \[5\] out of range: this network has 5 classes"):
        net(x, selector=torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="must be \\[B\\] integer indices for B=3"):
        net(x, selector=torch.tensor([0.0, 1.0, 2.0]))


def test_selection_takes_present_classes_and_fakes_at_the_asked_rate():
    torch.manual_seed(0)
    targets = torch.zeros(4000, 6)
    targets[:, 1] = 1
    targets[::2, 4] = 1
    targets[3, :] = 0  # nothing present: a fake
    targets[5, :] = 1  # everything present: real
    chosen, real = sample_selection(targets, 0.0)
    assert bool((targets[torch.arange(4000), chosen] > 0)[real].all()) and not bool(real[3]) and bool(real[5])
    assert int((~real).sum()) == 1
    chosen, real = sample_selection(targets, 0.3)
    assert abs(float((~real).float().mean()) - 0.3) < 0.03
    assert bool((targets[torch.arange(4000), chosen] > 0).eq(real).all())  # fakes are absent classes


def test_the_objective_terms_and_a_batch_of_fakes_only():
    w = SaliencyWeights()
    masks = torch.full((2, 1, 8, 8), 0.25, requires_grad=True)
    out = real_time_saliency_loss(masks, torch.tensor([0.5, 0.9]), torch.tensor([0.2, 0.1]), torch.tensor([1, 1]), w)
    expected_preserve = -(torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.9))) / 2
    torch.testing.assert_close(out["preserve"], expected_preserve)
    torch.testing.assert_close(out["destroy"], (0.2**0.3 + 0.1**0.3) / torch.tensor(2.0))
    torch.testing.assert_close(out["area"], torch.tensor(0.2505**0.3))
    # the power of each pixel (the reference's calc_area_loss), not of the mean area
    half = torch.zeros(1, 1, 2, 2)
    half[..., 0, :] = 1.0
    area = real_time_saliency_loss(half, torch.ones(1), torch.zeros(1), torch.tensor([True]), w)["area"]
    torch.testing.assert_close(area, (1.0005**0.3 + 0.0005**0.3) / torch.tensor(2.0))
    assert out["tv"].item() == 0.0
    fakes = real_time_saliency_loss(masks, torch.zeros(2), torch.ones(2), torch.tensor([False, False]), w)
    assert fakes["preserve"].item() == 0.0 and fakes["destroy"].item() == 0.0 and torch.isfinite(fakes["loss"])
    fakes["loss"].backward()
    assert bool((masks.grad > 0).all())  # a fake class's mask is pushed towards empty
    with pytest.raises(ValueError, match="destroy_power must be > 0"):
        SaliencyWeights(destroy_power=0)


def test_trains_on_the_shared_loop_exports_and_evaluates(classifier_ckpt, tmp_path):
    torch.manual_seed(0)
    module = RealTimeSaliencyModule(str(classifier_ckpt), fill="blur", **NET)
    batch = next(iter(_dm().train_dataloader()))
    out = module.train().explain_batch(batch)
    out["loss"].backward()
    assert all(p.grad is not None for p in module.mask_net.parameters() if p.requires_grad)
    assert all(p.grad is None for p in module.classifier.parameters())
    export = ExportExplainer(folder=str(tmp_path / "rtsal"), num_examples=2)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[ExplainerMetrics(), MaskPanel(num_images=2), export],
    )
    trainer.fit(module, datamodule=_dm())
    assert "val/labels/pointing_game.accuracy" in trainer.callback_metrics
    loaded = explainer.load(tmp_path / "rtsal")
    assert loaded.kind == "rtsal" and loaded.config["loss_weights"]["fake_prob"] == 0.3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.sigmoid(module.eval()(x))
    torch.testing.assert_close(loaded.explain(x), expected, atol=1e-5, rtol=0)
    method = build_method("rtsal", path=str(tmp_path / "rtsal"))
    maps = method(x, torch.tensor([[3, -1], [0, 9]]))
    torch.testing.assert_close(maps[0, 0], expected[0, 3], atol=1e-5, rtol=0)
    assert maps[0, 1].abs().sum() == 0
    torch.testing.assert_close(maps[1, 1], expected[1, 9], atol=1e-5, rtol=0)


def test_refuses_a_network_without_a_selector(classifier_ckpt):
    with pytest.raises(ValueError, match="use mask_net: selector_unet"):
        RealTimeSaliencyModule(str(classifier_ckpt), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2})
    with pytest.raises(ValueError, match="fake_prob must be in"):
        RealTimeSaliencyModule(str(classifier_ckpt), fake_prob=1.0, **NET)
