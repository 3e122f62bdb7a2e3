"""FrozenClassifier: really frozen under Lightning, gradients still reach the input, safe loading."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from explainer.classifiers import FrozenClassifier, build_classifier, state_hash
from explainer.data.digits import DigitScenesDataModule
from tests.helpers import write_classifier_checkpoint


class _MaskLearner(pl.LightningModule):
    """A trainable input scaling in front of a frozen classifier, as an Explainer would be."""

    def __init__(self, frozen: FrozenClassifier) -> None:
        super().__init__()
        self.frozen = frozen
        self.scale = nn.Parameter(torch.ones(1, 3, 1, 1))
        self.input_grad_norms: list[float] = []

    def training_step(self, batch, batch_idx):
        x = (batch.image * self.scale).detach().requires_grad_(True)
        assert not self.frozen.training and not self.frozen.net.training
        logits = self.frozen(x * self.scale)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        (grad,) = torch.autograd.grad(loss, x, retain_graph=True)
        self.input_grad_norms.append(float(grad.abs().sum()))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_frozen_classifier_survives_a_lightning_fit(tmp_path):
    net = build_classifier("tests.helpers:tiny_net", 10)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net.train()(torch.randn(16, 3, 32, 32) * 3 + 1)
    frozen = FrozenClassifier(net)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    module = _MaskLearner(frozen)
    dm = DigitScenesDataModule(image_size=32, train_scenes=16, val_scenes=8, test_scenes=8, batch_size=8)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    assert not frozen.training and all(not m.training for m in frozen.modules())
    after = frozen.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"{key} changed during fit"
    assert all(not p.requires_grad for p in frozen.parameters())
    assert all(p.grad is None for p in frozen.parameters())
    assert len(module.input_grad_norms) == 4 and min(module.input_grad_norms) > 0
    assert not torch.equal(module.scale.detach(), torch.ones(1, 3, 1, 1)), "the trainable part must move"


def test_frozen_classifier_stays_in_eval_mode_when_asked_to_train():
    frozen = FrozenClassifier(build_classifier("tests.helpers:tiny_net", 3))
    container = nn.Sequential(frozen)
    container.train()
    assert not frozen.training and not frozen.net.features[1].training
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(frozen(x), frozen(x))  # dropout is off


def test_content_hash_identifies_weights():
    a = build_classifier("digitnet", 10)
    b = build_classifier("digitnet", 10)
    b.load_state_dict(a.state_dict())
    assert FrozenClassifier(a).content_hash == FrozenClassifier(b).content_hash == state_hash(a)
    with torch.no_grad():
        b.head.bias[0] += 1e-3
    assert state_hash(b) != state_hash(a)


def _classifier_checkpoint(tmp_path, num_classes=10):
    return write_classifier_checkpoint(tmp_path, num_classes)


def test_from_checkpoint_round_trip_and_class_count_mismatch(tmp_path):
    module, path = _classifier_checkpoint(tmp_path)
    frozen = FrozenClassifier.from_checkpoint(path, num_classes=10)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(frozen(x), module.eval()(x))
    assert frozen.reference == str(path) and frozen.num_classes == 10
    with pytest.raises(ValueError, match=r"10 classes.*20"):
        FrozenClassifier.from_checkpoint(path, num_classes=20)


def test_bad_checkpoint_paths_give_clear_errors_and_write_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        FrozenClassifier.from_checkpoint(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        FrozenClassifier.from_checkpoint(junk)
    assert junk.read_text() == "not a checkpoint"
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        FrozenClassifier.from_checkpoint(plain)


class _Payload:
    """An arbitrary object: a weights-only load must refuse to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload()}, path)
    with pytest.raises(ValueError, match="weights-only"):
        FrozenClassifier.from_checkpoint(path)
