"""The encoding check: the metric on hand-built models, the evaluator's training masks, and evaluate.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explainer.metrics import EncodingCheck
from explainer.ops import random_blob_masks


class MeanOfChannel(nn.Module):
    """Logits: class c's logit is ``scale`` times the mean of channel c (3 classes)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.mean(dim=(2, 3))


def test_the_metric_averages_both_models_target_probabilities():
    images = torch.rand(2, 3, 8, 8)
    masks = torch.zeros(2, 2, 8, 8)
    masks[0, 0, :4] = 1.0  # the top half
    masks[1, 0] = 0.5
    classes = torch.tensor([[2, -1], [0, -1]])
    metric = EncodingCheck(MeanOfChannel(4.0), MeanOfChannel(-1.0))
    metric.update(images, masks, classes)
    out = metric.compute()
    top = torch.zeros(8, 8)
    top[:4] = 1.0
    x0, x1 = images[0] * top, images[1] * 0.5
    p = (torch.sigmoid(4 * x0[2].mean()) + torch.sigmoid(4 * x1[0].mean())) / 2
    q = (torch.sigmoid(-x0[2].mean()) + torch.sigmoid(-x1[0].mean())) / 2
    assert out["classifier_p"].item() == pytest.approx(p.item(), abs=1e-6)
    assert out["evaluator_p"].item() == pytest.approx(q.item(), abs=1e-6)
    assert out["gap"].item() == pytest.approx((p - q).item(), abs=1e-6)
    assert out["invalid"].item() == 0


def test_padding_only_and_maps_outside_the_unit_range():
    metric = EncodingCheck(MeanOfChannel(1.0), MeanOfChannel(1.0))
    metric.update(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8), torch.tensor([[-1]]))
    assert torch.isnan(metric.compute()["gap"])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        metric.update(torch.rand(1, 3, 8, 8), torch.full((1, 1, 8, 8), 2.0), torch.tensor([[0]]))


def test_random_blob_masks_are_binary_and_keep_the_drawn_share():
    gen = torch.Generator().manual_seed(0)
    masks = random_blob_masks(64, (32, 48), area=(0.2, 0.6), generator=gen)
    assert masks.shape == (64, 1, 32, 48)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    share = masks.mean(dim=(1, 2, 3))
    assert share.min() >= 0.2 - 1e-3 and share.max() <= 0.6 + 1e-3 and share.std() > 0.05
    with pytest.raises(ValueError, match="area must be a range"):
        random_blob_masks(1, (8, 8), area=(0.7, 0.2))


def test_an_evaluator_trains_on_masked_images(monkeypatch):
    from explainer.data.digits import DigitScenesDataModule
    from explainer.modules import ClassifierModule

    module = ClassifierModule(
        backbone="tests.helpers:tiny_net", num_classes=10, random_masks=True, mask_area=(0.3, 0.3)
    )
    batch = next(iter(DigitScenesDataModule(image_size=32, val_scenes=8, batch_size=8).val_dataloader()))
    seen = []
    module.net.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    module.training_step(batch, 0)
    zeros = (seen[0] == 0).all(dim=1).float().mean(dim=(1, 2))  # masked-out pixels are exactly 0 (mean colour)
    assert torch.allclose(zeros, torch.full_like(zeros, 0.7), atol=0.02)
    with pytest.raises(ValueError, match="mask_area must be a range"):
        ClassifierModule(backbone="tests.helpers:tiny_net", num_classes=10, mask_area=(0.9, 0.1))


def test_evaluate_reports_the_encoding_check_with_an_evaluator(tmp_path, repo):
    from explainer.evaluation.cli import main
    from tests.helpers import write_classifier_checkpoint

    _, classifier = write_classifier_checkpoint(tmp_path, seed=0)
    (tmp_path / "evaluator").mkdir()
    _, evaluator = write_classifier_checkpoint(tmp_path / "evaluator", seed=1)
    args = [
        "--data",
        str(repo / "configs/data/digits.yaml"),
        "--data-arg",
        "image_size=32",
        "--data-arg",
        "test_scenes=6",
        "--classifier",
        str(classifier),
        "--methods",
        "centre,uniform",
        "--trainer.enable_progress_bar",
        "false",
    ]
    rows = main([*args, "--metrics", "encoding", "--evaluator", str(evaluator), "--out", str(tmp_path / "r")])
    value = {(r["method"], r["metric"]): r["value"] for r in rows}
    for method in ("centre", "uniform"):
        gap = value[(method, "encoding.gap")]
        assert gap == pytest.approx(value[(method, "encoding.classifier_p")] - value[(method, "encoding.evaluator_p")])
    with pytest.raises(SystemExit):
        main([*args, "--metrics", "encoding", "--out", str(tmp_path / "no_evaluator")])


def test_all_metrics_include_the_encoding_check_only_with_an_evaluator():
    from explainer.evaluation.cli import select_metrics

    assert "encoding" in select_metrics("all", has_evaluator=True)
    assert "encoding" not in select_metrics("all", has_evaluator=False) and "saliency" in select_metrics("all", False)
    with pytest.raises(ValueError, match="needs --evaluator"):
        select_metrics("saliency,encoding", has_evaluator=False)
