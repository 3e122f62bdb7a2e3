"""ExplainerModule: gradients, a really frozen classifier, export / load, fine-tuning and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch

import explainer
from explainer.callbacks import ExplainerMetrics, ExportExplainer, MaskPanel
from explainer.data.digits import DigitScenesDataModule
from explainer.export import export_explainer
from explainer.modules import ExplainerModule
from tests.helpers import write_classifier_checkpoint

MASK_NET = {"mask_net": "unet", "mask_net_kwargs": {"width": 4, "depth": 2}}


def _dm(**kw):
    args = dict(image_size=32, train_scenes=16, val_scenes=8, test_scenes=8, batch_size=8)
    return DigitScenesDataModule(**{**args, **kw})


def _trainer(tmp_path, **kw):
    args = dict(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        enable_checkpointing=False,
    )
    return pl.Trainer(**{**args, **kw})


@pytest.fixture
def classifier_ckpt(tmp_path):
    return write_classifier_checkpoint(tmp_path)[1]


def test_mask_net_gets_gradients_and_the_classifier_none(classifier_ckpt):
    module = ExplainerModule(str(classifier_ckpt), **MASK_NET)
    batch = next(iter(_dm().train_dataloader()))
    module.train()
    out = module.explain_batch(batch)
    out["loss"].backward()
    assert all(p.grad is not None for p in module.mask_net.parameters())
    assert sum(float(p.grad.abs().sum()) for p in module.mask_net.parameters()) > 0
    assert all(p.grad is None and not p.requires_grad for p in module.classifier.parameters())
    assert not module.classifier.training
    optimizer = module.configure_optimizers()
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in module.mask_net.parameters()}


def test_classifier_is_bit_identical_after_fit_and_absent_from_checkpoints(classifier_ckpt, tmp_path):
    module = ExplainerModule(str(classifier_ckpt), lr=1e-2, **MASK_NET)
    before = {k: v.clone() for k, v in module.classifier.state_dict().items()}
    mask_before = {k: v.clone() for k, v in module.mask_net.state_dict().items()}
    trainer = _trainer(
        tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[ExplainerMetrics(), MaskPanel(num_images=2)]
    )
    trainer.fit(module, datamodule=_dm())
    for key, value in module.classifier.state_dict().items():
        assert torch.equal(value, before[key]), f"classifier {key} changed"
    assert any(not torch.equal(v, mask_before[k]) for k, v in module.mask_net.state_dict().items())
    ckpt_path = trainer.checkpoint_callback.best_model_path
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert not any(k.startswith("classifier.") for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["classifier_hash"] == module.classifier.content_hash
    assert "val/labels/masked_accuracy" in trainer.logged_metrics
    assert {
        "val/labels/pointing_game.accuracy",
        "val/labels/segmentation.c_iou",
        "val/labels/box_iou.c_iou",
        "val/labels/saliency.saliency",
    } <= set(trainer.logged_metrics)
    reloaded = ExplainerModule.load_from_checkpoint(ckpt_path, weights_only=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reloaded.eval()(x), module.eval()(x))


def test_export_then_load_in_a_fresh_process_reproduces_masks(classifier_ckpt, tmp_path):
    module = ExplainerModule(str(classifier_ckpt), **MASK_NET).eval()
    with torch.no_grad():  # move away from the initialisation so the check means something
        for p in module.mask_net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    images = torch.randn(3, 3, 32, 32)
    folder = export_explainer(module, tmp_path / "export", input_size=(32, 32), example_images=images, torchscript=True)
    config = json.loads((folder / "config.json").read_text())
    assert config["classifier"]["sha256"] == module.classifier.content_hash
    assert config["class_names"] == [str(i) for i in range(10)] and config["mask_net"]["name"] == "unet"
    assert (folder / "examples.png").is_file() and (folder / "model.ts").is_file()
    torch.save(images, tmp_path / "images.pt")
    with torch.no_grad():
        expected = torch.sigmoid(module(images))
    torch.save(expected, tmp_path / "expected.pt")
    code = (
        "import torch, explainer; m = explainer.load(r'{}'); x = torch.load(r'{}', weights_only=True);"
        "e = torch.load(r'{}', weights_only=True); d = (m.explain(x) - e).abs().max().item();"
        "print(d); assert d < 1e-5, d; ts = torch.jit.load(r'{}');"
        "assert (torch.sigmoid(ts(x)) - e).abs().max().item() < 1e-5"
    ).format(folder, tmp_path / "images.pt", tmp_path / "expected.pt", folder / "model.ts")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
        env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[2])},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = explainer.load(folder)
    assert loaded.explain(images, classes=["3", "7"]).shape == (3, 2, 32, 32)
    torch.testing.assert_close(loaded.explain(images, classes=[3])[:, 0], expected[:, 3], atol=1e-5, rtol=0)
    with pytest.raises(FileExistsError):
        export_explainer(module, folder)


def test_fine_tuning_keeps_shared_class_rows_and_reinitialises_new_ones(classifier_ckpt, tmp_path):
    module = ExplainerModule(str(classifier_ckpt), **MASK_NET)
    folder = export_explainer(module, tmp_path / "export")
    names = ["3", "new_a", "7", "new_b"]
    _, other_ckpt = write_classifier_checkpoint(tmp_path, num_classes=4, seed=1, class_names=names)
    tuned = ExplainerModule(str(other_ckpt), num_classes=4, class_names=names, init_from=str(folder), **MASK_NET)
    old_w, new_w = module.mask_net.head.weight, tuned.mask_net.head.weight
    torch.testing.assert_close(new_w[0], old_w[3])
    torch.testing.assert_close(new_w[2], old_w[7])
    assert not torch.equal(new_w[1], old_w[1])
    torch.testing.assert_close(tuned.mask_net.stem[0].weight, module.mask_net.stem[0].weight)
    batch = next(iter(_dm().train_dataloader()))
    # the tuned explainer trains against the new classifier (4 classes): a data module of 4 classes is needed
    batch.labels = batch.labels[:, :4]
    assert torch.isfinite(tuned.explain_batch(batch)["loss"])


def test_class_count_mismatch_names_both_numbers(classifier_ckpt):
    with pytest.raises(ValueError, match=r"10 classes.*20"):
        ExplainerModule(str(classifier_ckpt), num_classes=20, **MASK_NET)


def test_a_classifier_with_the_wrong_output_shape_fails_at_start(tmp_path, monkeypatch):
    _, ckpt = write_classifier_checkpoint(tmp_path)
    module = ExplainerModule(str(ckpt), **MASK_NET)
    monkeypatch.setattr(module.classifier, "forward", lambda x: torch.zeros(x.shape[0], 3, 2))
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match=r"gives \(2, 3, 2\).*class scores \[B, C\].*option output"):
        trainer.fit(module, datamodule=_dm())
    assert trainer.global_step == 0


def test_nan_loss_stops_training_naming_the_step_and_keeps_the_checkpoint(classifier_ckpt, tmp_path):
    module = ExplainerModule(str(classifier_ckpt), **MASK_NET)
    trainer = _trainer(tmp_path, max_epochs=3, enable_checkpointing=True)
    original = module.explain_batch

    def poisoned(batch):
        out = original(batch)
        if module.current_epoch == 1 and module.training:
            out["loss"] = out["loss"] * float("nan")
        return out

    module.explain_batch = poisoned
    with pytest.raises(FloatingPointError, match=r"non-finite Explainer loss at step 2"):
        trainer.fit(module, datamodule=_dm())
    best = trainer.checkpoint_callback.best_model_path
    assert best and torch.load(best, weights_only=True)["epoch"] == 0


def test_prediction_targets_and_fills(classifier_ckpt):
    batch = next(iter(_dm().train_dataloader()))
    for fill in ("mean", "zero", "blur"):
        module = ExplainerModule(str(classifier_ckpt), targets="predictions", fill=fill, **MASK_NET)
        out = module.explain_batch(batch)
        with torch.no_grad():
            expected = (torch.sigmoid(module.classifier(batch.image)) > 0.5).float()
        assert torch.equal(out["targets"], expected)
        assert torch.isfinite(out["loss"])
    fill = ExplainerModule(str(classifier_ckpt), fill="zero", **MASK_NET).fill_for(batch.image)
    black = (torch.zeros(1, 3, 1, 1) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(fill, black.expand_as(batch.image))


def test_export_callback_writes_the_best_checkpoint(classifier_ckpt, tmp_path):
    module = ExplainerModule(str(classifier_ckpt), **MASK_NET)
    export = ExportExplainer(folder=str(tmp_path / "exported"), num_examples=2)
    trainer = _trainer(tmp_path, enable_checkpointing=True, callbacks=[export])
    trainer.fit(module, datamodule=_dm())
    loaded = explainer.load(tmp_path / "exported")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded.explain(x), torch.sigmoid(module.eval()(x)), atol=1e-5, rtol=0)
    with pytest.raises(FileExistsError):  # refuses before training, not after
        _trainer(tmp_path, callbacks=[ExportExplainer(folder=str(tmp_path / "exported"))]).fit(
            ExplainerModule(str(classifier_ckpt), **MASK_NET), datamodule=_dm()
        )


def test_an_extra_loss_term_is_trained_logged_and_validated_by_name(classifier_ckpt, tmp_path, monkeypatch):
    from explainer.losses import LOSS_TERMS, register_loss_term

    monkeypatch.setattr(LOSS_TERMS, "_entries", dict(LOSS_TERMS._entries))
    register_loss_term("inverse_mass")(lambda x, w: (1 - x.target_mask).mean())
    module = ExplainerModule(str(classifier_ckpt), extra_losses={"inverse_mass": 0.5}, **MASK_NET)
    batch = next(iter(_dm().train_dataloader()))
    out = module.explain_batch(batch)
    paper = module.weights.terms()
    expected = out["classification"] + sum(w * out[k] for k, w in paper.items())
    assert list(paper)[-1] == "inverse_mass"
    torch.testing.assert_close(out["loss"], expected)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=_dm())
    assert "train/loss_inverse_mass" in trainer.logged_metrics
    with pytest.raises(ValueError, match="unknown loss term 'inverse_mas'"):
        ExplainerModule(str(classifier_ckpt), extra_losses={"inverse_mas": 0.5}, **MASK_NET)


def test_a_one_cycle_schedule_warms_up_and_anneals_over_the_run(classifier_ckpt, tmp_path):
    module = ExplainerModule(str(classifier_ckpt), **MASK_NET, lr=1e-2, scheduler="onecycle")
    rates = []

    class Rates(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    _trainer(tmp_path, max_epochs=3, callbacks=[Rates()], limit_val_batches=0).fit(module, datamodule=_dm())
    assert len(rates) == 6 and rates[0] < 1e-3 and max(rates) > 5e-3 and rates[-1] < max(rates)
    with pytest.raises(ValueError, match="unknown scheduler 'cyclic'"):
        ExplainerModule(str(classifier_ckpt), **MASK_NET, scheduler="cyclic").configure_optimizers()
