"""Precision: ``auto-mixed`` resolved per machine, bf16 autocast training and evaluation on CPU, and
``explain(precision=...)``."""

from __future__ import annotations

import json
import logging

import lightning.pytorch as pl
import pytest
import torch

import explainer
from explainer.cli import make_cli
from explainer.data.digits import DigitScenesDataModule
from explainer.evaluation.cli import main as evaluate_main
from explainer.export import export_explainer
from explainer.modules import ExplainerModule
from explainer.precision import autocast_dtype, resolve_precision
from tests.helpers import write_classifier_checkpoint

MASK_NET = {"mask_net": "unet", "mask_net_kwargs": {"width": 4, "depth": 2}}


def _fake_cuda(monkeypatch, available: bool, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake GPU")


@pytest.mark.parametrize(
    ("available", "bf16", "expected"),
    [(True, True, "bf16-mixed"), (True, False, "16-mixed"), (False, False, "32-true")],
)
def test_auto_mixed_resolves_to_what_the_machine_has(monkeypatch, available, bf16, expected):
    _fake_cuda(monkeypatch, available, bf16)
    assert resolve_precision("auto-mixed") == expected


@pytest.mark.parametrize("value", ["bf16-mixed", "16-mixed", "32-true", "64-true", 32, "16", None])
def test_explicit_precisions_pass_through(monkeypatch, value):
    _fake_cuda(monkeypatch, True, True)
    assert resolve_precision(value) == value


def test_autocast_dtype_of_each_precision(monkeypatch):
    assert autocast_dtype(None) is None and autocast_dtype("32-true") is None
    assert autocast_dtype("bf16-mixed") is torch.bfloat16 and autocast_dtype("16-mixed") is torch.float16
    _fake_cuda(monkeypatch, True, True)
    assert autocast_dtype("auto-mixed", "cuda") is torch.bfloat16
    assert autocast_dtype("auto-mixed", "cpu") is None  # a CPU run of explain() stays float32
    with pytest.raises(ValueError, match="bf16-mixed"):
        autocast_dtype("bf16-true")


def _cli(tmp_path, ckpt, *extra):
    return make_cli(
        [
            "--config",
            "configs/quickstart/explainer.yaml",
            "--model.init_args.classifier",
            str(ckpt),
            "--model.init_args.encoder_from_classifier",
            "false",
            "--data.init_args.image_size",
            "32",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path / "runs"),
            *extra,
        ],
        run=False,
    )


def test_the_cli_resolves_auto_mixed_before_the_trainer_is_built(tmp_path, repo, monkeypatch, caplog):
    monkeypatch.chdir(repo)
    _, ckpt = write_classifier_checkpoint(tmp_path)
    with caplog.at_level(logging.INFO):
        cli = _cli(tmp_path, ckpt, "--trainer.precision", "auto-mixed")
    assert cli.trainer.precision == "32-true"  # this machine has no CUDA
    assert "auto-mixed: 32-true" in caplog.text
    # a GPU with bfloat16 (the queries faked; the Trainer kept on the CPU, where bf16 autocast exists too)
    _fake_cuda(monkeypatch, True, True)
    cli = _cli(tmp_path, ckpt, "--trainer.precision", "auto-mixed", "--trainer.accelerator", "cpu")
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.config.trainer.precision == "bf16-mixed"  # the saved config records the choice
    cli = _cli(tmp_path, ckpt, "--trainer.precision", "16-mixed", "--trainer.accelerator", "cpu")
    assert cli.config.trainer.precision == "16-mixed"  # passed on as given (Lightning runs fp16 as bf16 on CPU)
    with pytest.raises(SystemExit):  # an unknown value is refused by the parser, listing the valid ones
        _cli(tmp_path, ckpt, "--trainer.precision", "bf17-mixed")


def test_the_presets_ask_for_auto_mixed(repo):
    import yaml

    for path in sorted((repo / "configs" / "experiment").glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["trainer"]["precision"] == "auto-mixed", path.name


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.dtypes: set[torch.dtype] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        handle = pl_module.mask_net.register_forward_hook(lambda m, i, o: self.dtypes.add(o.dtype))
        self._handle = handle

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._handle.remove()


def test_bf16_autocast_trains_the_explainer_on_cpu(tmp_path):
    _, ckpt = write_classifier_checkpoint(tmp_path)
    torch.manual_seed(0)
    module = ExplainerModule(str(ckpt), **MASK_NET, lr=1e-3)
    data = DigitScenesDataModule(image_size=32, train_scenes=32, val_scenes=8, test_scenes=8, batch_size=8)
    losses = _Losses()
    trainer = pl.Trainer(
        precision="bf16-mixed",
        accelerator="cpu",
        max_steps=4,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        callbacks=[losses],
    )
    before = {k: v.clone() for k, v in module.mask_net.state_dict().items()}
    trainer.fit(module, datamodule=data)
    assert len(losses.losses) == 4 and all(torch.isfinite(torch.tensor(losses.losses)))
    assert losses.dtypes == {torch.bfloat16}  # the mask network really ran in bf16
    assert all(v.dtype == torch.float32 for v in module.mask_net.state_dict().values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in module.mask_net.state_dict().items())
    images = next(iter(data.val_dataloader())).image
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        masks = module.eval().maps(images)
    assert torch.isfinite(masks.float()).all() and masks.shape == (8, 10, 32, 32)


def test_explain_under_bf16_is_close_to_float32(tmp_path):
    _, ckpt = write_classifier_checkpoint(tmp_path)
    torch.manual_seed(0)
    export = export_explainer(ExplainerModule(str(ckpt), **MASK_NET), tmp_path / "export")
    model = explainer.load(export)
    images = torch.randn(4, 3, 32, 32)
    fp32 = model.explain(images)
    bf16 = model.explain(images, precision="bf16-mixed")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    torch.testing.assert_close(bf16, fp32, atol=0.03, rtol=0)
    assert not torch.equal(bf16, fp32)  # autocast was on
    assert torch.equal(model.explain(images, precision="auto-mixed"), fp32)  # auto-mixed on CPU: float32
    picked = model.explain(images, classes=["3"], precision="bf16-mixed")
    assert torch.equal(picked[:, 0], bf16[:, 3])
    with pytest.raises(ValueError, match="16-mixed"):
        model.explain(images, precision="fp8")


@pytest.mark.slow  # a training run (the default suite keeps to its time budget)
def test_evaluate_runs_under_the_precision_it_is_given(tmp_path, repo):
    _, ckpt = write_classifier_checkpoint(tmp_path)
    torch.manual_seed(0)
    export = export_explainer(ExplainerModule(str(ckpt), **MASK_NET), tmp_path / "explainer")
    out = tmp_path / "results"
    rows = evaluate_main(
        [
            "--data",
            str(repo / "configs/data/digits.yaml"),
            "--data-arg",
            "image_size=32",
            "--data-arg",
            "test_scenes=8",
            "--data-arg",
            "batch_size=4",
            "--classifier",
            str(ckpt),
            "--methods",
            f"explainer={export},gradient",
            "--metrics",
            "pointing_game,saliency",
            "--out",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.precision",
            "bf16-mixed",
        ]
    )
    assert json.loads((out / "settings.json").read_text())["precision"] == "bf16-mixed"
    assert {r["method"] for r in rows} == {"explainer", "gradient"}
    assert all(r["value"] == r["value"] and abs(r["value"]) != float("inf") for r in rows)
