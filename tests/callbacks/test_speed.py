"""Accelerate: channels-last and compiled networks train like the plain ones, under the same state-dict keys."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

import explainer
from explainer.callbacks import Accelerate
from explainer.classifiers.frozen import state_hash
from explainer.data.digits import DigitScenesDataModule
from explainer.export import export_explainer
from explainer.modules import ClassifierModule, ExplainerModule
from tests.helpers import write_classifier_checkpoint

MASK_NET = {"mask_net": "unet", "mask_net_kwargs": {"width": 4, "depth": 2}}


class Record(pl.Callback):
    """The loss of each training step and the memory format of the images the mask network gets."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.nhwc: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.nhwc.append(batch.image.is_contiguous(memory_format=torch.channels_last))


def _fit(tmp_path, module, *callbacks, steps: int = 3) -> Record:
    record = Record()
    pl.seed_everything(0)
    data = DigitScenesDataModule(image_size=32, train_scenes=32, val_scenes=8, test_scenes=8, batch_size=8)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        callbacks=[*callbacks, record],
    )
    trainer.fit(module, datamodule=data)
    return record


def _explainer(ckpt) -> ExplainerModule:
    torch.manual_seed(0)
    return ExplainerModule(str(ckpt), **MASK_NET, lr=1e-3)


@pytest.mark.slow  # a training run (the default suite keeps to its time budget)
def test_channels_last_trains_the_explainer_as_without(tmp_path):
    _, ckpt = write_classifier_checkpoint(tmp_path)
    plain, nhwc = _explainer(ckpt), _explainer(ckpt)
    keys = list(plain.state_dict())
    classifier_hash = state_hash(nhwc.classifier.net)
    reference = _fit(tmp_path, plain)
    record = _fit(tmp_path, nhwc, Accelerate(channels_last=True))
    assert record.nhwc == [True] * 3 and reference.nhwc == [False] * 3
    conv = next(m for m in nhwc.mask_net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    frozen = next(m for m in nhwc.classifier.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert frozen.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(torch.tensor(record.losses), torch.tensor(reference.losses), rtol=1e-4, atol=1e-5)
    assert list(nhwc.state_dict()) == keys
    assert state_hash(nhwc.classifier.net) == classifier_hash  # the same weights, only stored NHWC
    for (name, a), b in zip(plain.mask_net.state_dict().items(), nhwc.mask_net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow  # a training run (the default suite keeps to its time budget)
def test_compiled_networks_keep_their_keys_and_export(tmp_path):
    _, ckpt = write_classifier_checkpoint(tmp_path)
    module = _explainer(ckpt)
    keys = list(module.state_dict())
    accelerate = Accelerate(channels_last=True, compile=True, compile_classifier=True, compile_backend="eager")
    record = _fit(tmp_path, module, accelerate, steps=2)
    assert all(torch.isfinite(torch.tensor(record.losses)))
    assert module.mask_net._compiled_call_impl is not None
    assert module.classifier.net._compiled_call_impl is not None
    assert list(module.state_dict()) == keys
    export = export_explainer(module, tmp_path / "export")
    loaded = explainer.load(export)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.sigmoid(module.eval().mask_net(images))
    torch.testing.assert_close(loaded.explain(images), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # a training run (the default suite keeps to its time budget)
def test_classifier_module_trains_channels_last(tmp_path):
    torch.manual_seed(0)
    plain = ClassifierModule(backbone="tests.helpers:tiny_net", num_classes=10)
    torch.manual_seed(0)
    nhwc = ClassifierModule(backbone="tests.helpers:tiny_net", num_classes=10)
    keys = list(nhwc.state_dict())
    reference = _fit(tmp_path, plain, steps=2)
    record = _fit(tmp_path, nhwc, Accelerate(channels_last=True, compile=True, compile_backend="eager"), steps=2)
    assert record.nhwc == [True, True] and nhwc.net._compiled_call_impl is not None
    torch.testing.assert_close(torch.tensor(record.losses), torch.tensor(reference.losses), rtol=1e-4, atol=1e-5)
    assert list(nhwc.state_dict()) == keys


def test_options_that_do_not_apply_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no frozen classifier"):
        Accelerate(compile_classifier=True).setup(None, ClassifierModule("tests.helpers:tiny_net"), "fit")
    with pytest.raises(ValueError, match="mask_net"):
        Accelerate(channels_last=True).setup(None, pl.LightningModule(), "fit")
