"""The shared base of the learned explainers: fills shared with FIDO, the learned in-fill, single-label
classifiers, and refusals."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from explainer.data.digits import DigitScenesDataModule
from explainer.export_infiller import export_infiller
from explainer.methods.infill import BlurInfill, LocalMeanInfill
from explainer.modules import ExplainerModule, RealTimeSaliencyModule
from explainer.modules.learned import build_fill
from explainer.nets.infiller import InfillerNet
from explainer.ops import IMAGENET_MEAN, IMAGENET_STD, gaussian_blur
from tests.helpers import write_classifier_checkpoint

MASK_NET = {"mask_net": "unet", "mask_net_kwargs": {"width": 4, "depth": 2}}
RTSAL_NET = {"mask_net": "selector_unet", "mask_net_kwargs": {"backbone": "digitnet", "width": 8, "probe_size": 32}}


def _dm(size: int = 32):
    return DigitScenesDataModule(image_size=size, train_scenes=16, val_scenes=8, test_scenes=8, batch_size=8)


@pytest.fixture
def classifier_ckpt(tmp_path):
    return write_classifier_checkpoint(tmp_path)[1]


def test_the_explainer_blur_fill_is_the_paper_blur():
    fill = build_fill("blur", 5.0)
    assert isinstance(fill, BlurInfill)
    x = torch.randn(2, 3, 20, 33)
    expected = gaussian_blur(x, 5.0, padding_mode="reflect")
    torch.testing.assert_close(fill(x, torch.ones(2, 1, 20, 33)), expected)


def test_a_mask_dependent_fill_is_computed_for_each_mask(classifier_ckpt):
    module = ExplainerModule(str(classifier_ckpt), fill="local_mean", **MASK_NET)
    assert isinstance(module.infill, LocalMeanInfill) and module.infill.mask_dependent
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., :8] = 1
    kept = module.perturb(x, mask)
    removed = module.perturb(x, 1 - mask)
    # the left half is kept in one image and filled from the right half in the other
    torch.testing.assert_close(kept[..., :8], x[..., :8])
    torch.testing.assert_close(removed[..., :8], module.infill(x, 1 - mask)[..., :8])
    assert not torch.allclose(kept[..., 8:], removed[..., :8].flip(-1))


def test_the_explainer_trains_with_a_learned_infill(classifier_ckpt, tmp_path):
    torch.manual_seed(0)
    folder = export_infiller(
        InfillerNet(width=4, depth=1), tmp_path / "infiller", (32, 32), IMAGENET_MEAN, IMAGENET_STD
    )
    module = ExplainerModule(str(classifier_ckpt), fill=f"learned={folder}", **MASK_NET)
    assert module.infill.mask_dependent and not any(p.requires_grad for p in module.infill.parameters())
    before = {k: v.clone() for k, v in module.infill.state_dict().items()}
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=True,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=_dm())
    assert not module.infill.training  # pinned in eval mode while the mask network trains
    for key, value in module.infill.state_dict().items():
        assert torch.equal(value, before[key]), key  # the in-filler is frozen
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert not any(k.startswith(("infill.", "classifier.")) for k in ckpt["state_dict"])  # stored by reference
    restored = ExplainerModule.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert restored.hparams.fill == f"learned={folder}"
    # data of another size than the in-filler's is refused before training, naming both sizes
    other = ExplainerModule(str(classifier_ckpt), fill=f"learned={folder}", **MASK_NET)
    with pytest.raises(ValueError, match="32"):
        pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path)).fit(
            other, datamodule=_dm(48)
        )


def test_real_time_saliency_with_a_single_label_classifier(classifier_ckpt):
    spec = {"source": str(classifier_ckpt), "activation": "softmax"}
    module = RealTimeSaliencyModule(spec, fill="mean", **RTSAL_NET)
    batch = next(iter(_dm().train_dataloader()))
    logits = module.classifier(batch.image)
    torch.testing.assert_close(module.class_probabilities(logits).sum(1), torch.ones(len(batch)))
    out = module.train().explain_batch(batch)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad


def test_an_unknown_fill_names_the_choices(classifier_ckpt):
    with pytest.raises(ValueError, match="local_mean"):
        ExplainerModule(str(classifier_ckpt), fill="gan", **MASK_NET)


def test_validation_takes_the_first_present_class_whatever_the_random_state():
    from explainer.modules.learned import sample_present_classes

    targets = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    for seed in (0, 1):
        torch.manual_seed(seed)
        assert sample_present_classes(targets, random=False).tolist() == [1, -1, 0]
    drawn = torch.stack([sample_present_classes(targets) for _ in range(200)])
    assert set(drawn[:, 0].tolist()) == {1, 3} and set(drawn[:, 1].tolist()) == {-1}
