"""The per-class objectives beyond the paper (docs/objectives.md): values on hand-computed cases, images without
a present class, and one batched classifier pass in the Explainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from explainer.losses import (
    LossInputs,
    LossWeights,
    class_deletion_loss,
    class_preservation_loss,
    explainer_loss,
    mask_binarisation_loss,
)
from explainer.modules.explainer_module import ExplainerModule, sample_present_classes
from tests.helpers import write_classifier_checkpoint

TARGETS = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def inputs(kept, removed, sampled, activation="sigmoid", mask_logits=None):
    b = len(sampled)
    zeros = torch.zeros(b, 3)
    masks = torch.zeros(b, 1, 4, 4)
    logits = mask_logits if mask_logits is not None else torch.zeros(b, 3, 4, 4)
    return LossInputs(logits, TARGETS[:b], zeros, zeros, masks, masks, activation, sampled, kept, removed)


def test_class_preservation_keeps_the_sampled_class_and_drops_the_other_present_ones():
    kept = torch.tensor([[0.5, 2.0, -1.0], [3.0, 3.0, 3.0], [1.0, -2.0, 0.3]])
    sampled = torch.tensor([1, -1, 2])
    value = class_preservation_loss(inputs(kept, kept, sampled), LossWeights())
    image0 = F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(0.5))  # keep class 1, drop class 0
    image2 = F.softplus(torch.tensor(-0.3))  # no other present class
    assert value.item() == pytest.approx(((image0 + image2) / 2).item(), abs=1e-6)  # image 1 has no class
    soft = class_preservation_loss(inputs(kept, kept, sampled, "softmax"), LossWeights())
    expected = -(torch.log_softmax(kept[0], 0)[1] + torch.log_softmax(kept[2], 0)[2]) / 2
    assert soft.item() == pytest.approx(expected.item(), abs=1e-6)


def test_class_deletion_lowers_the_sampled_class():
    removed = torch.tensor([[0.5, 2.0, -1.0], [3.0, 3.0, 3.0], [1.0, -2.0, 0.3]])
    sampled = torch.tensor([1, -1, 2])
    value = class_deletion_loss(inputs(removed, removed, sampled), LossWeights())
    expected = (-torch.log1p(-torch.sigmoid(torch.tensor(2.0))) - torch.log1p(-torch.sigmoid(torch.tensor(0.3)))) / 2
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    soft = class_deletion_loss(inputs(removed, removed, sampled, "softmax"), LossWeights())
    p1, p2 = torch.softmax(removed[0], 0)[1], torch.softmax(removed[2], 0)[2]
    assert soft.item() == pytest.approx((-(torch.log1p(-p1) + torch.log1p(-p2)) / 2).item(), abs=1e-6)


def test_without_present_classes_the_terms_add_zero_not_nan():
    kept = torch.randn(1, 3, requires_grad=True)
    for term in (class_preservation_loss, class_deletion_loss):
        value = term(inputs(kept, kept, torch.tensor([-1])), LossWeights())
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(kept.grad).all()


def test_binarisation_is_one_at_a_half_and_zero_at_saturated_masks():
    half = inputs(None, None, torch.tensor([0]), mask_logits=torch.zeros(1, 3, 4, 4))
    assert mask_binarisation_loss(half, LossWeights()).item() == pytest.approx(1.0)
    saturated = inputs(None, None, torch.tensor([0]), mask_logits=torch.full((1, 3, 4, 4), 30.0))
    assert mask_binarisation_loss(saturated, LossWeights()).item() < 1e-9


def test_the_explainer_adds_the_class_rows_to_its_one_classifier_pass(tmp_path):
    from explainer.data.digits import DigitScenesDataModule

    _, ckpt = write_classifier_checkpoint(tmp_path)
    extra = {"class_preservation": 1.0, "class_deletion": 0.5, "mask_binarisation": 0.1}
    torch.manual_seed(0)
    module = ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2}, extra_losses=extra)
    batch = next(iter(DigitScenesDataModule(image_size=32, val_scenes=8, batch_size=8).val_dataloader()))
    module.check_classifier(batch)  # the freeze check runs its own passes once
    calls = []
    module.classifier.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    out = module.explain_batch(batch)
    assert calls == [4 * len(batch)]  # masked, inverse, kept and removed rows in one pass
    expected = out["classification"] + sum(w * out[k] for k, w in module.weights.terms().items())
    torch.testing.assert_close(out["loss"], expected)
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.mask_net.parameters())
    plain = ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2})
    plain.check_classifier(batch)
    plain.classifier.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    plain.explain_batch(batch)
    assert calls[-1] == 2 * len(batch)  # the paper's loss keeps its two rows per image
    with pytest.raises(ValueError, match="no per-class rows"):
        explainer_loss(
            out["mask_logits"],
            out["targets"],
            out["masked_logits"],
            out["inverse_logits"],
            out["target_mask"],
            out["nontarget_mask"],
            module.weights,
        )


def test_sampled_classes_are_present_ones():
    torch.manual_seed(0)
    targets = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    draws = torch.stack([sample_present_classes(targets) for _ in range(200)])
    assert (
        set(draws[:, 0].tolist()) == {1, 2} and set(draws[:, 1].tolist()) == {-1} and set(draws[:, 2].tolist()) == {0}
    )
