"""CUDA paths (marked ``gpu``: skipped without CUDA). The same batch on the GPU and on the CPU gives the same
Explainer loss and masks, and the same attribution maps, up to float rounding."""

from __future__ import annotations

import pytest
import torch

from explainer.data.digits import DigitScenesDataModule
from explainer.methods import build_method
from explainer.modules import ExplainerModule
from tests.helpers import write_classifier_checkpoint

pytestmark = pytest.mark.gpu


@pytest.fixture
def batch():
    data = DigitScenesDataModule(image_size=32, train_scenes=8, val_scenes=8, test_scenes=8, batch_size=8)
    return next(iter(data.val_dataloader()))


def test_the_explainer_step_is_the_same_on_cuda_and_cpu(tmp_path, batch):
    _, ckpt = write_classifier_checkpoint(tmp_path)
    torch.manual_seed(0)
    module = ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2}).eval()
    on_cpu = module.explain_batch(batch)
    on_gpu = module.to("cuda").explain_batch(batch.to("cuda"))
    assert on_gpu["target_mask"].is_cuda
    for key in ("loss", "classification", "entropy", "tv", "class_area", "target_mask"):
        torch.testing.assert_close(on_gpu[key].cpu(), on_cpu[key], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["gradcam", "gradient", "rise"])
def test_attribution_maps_are_the_same_on_cuda_and_cpu(tmp_path, batch, method):
    from explainer.classifiers import FrozenClassifier

    _, ckpt = write_classifier_checkpoint(tmp_path)
    classifier = FrozenClassifier.from_checkpoint(str(ckpt))
    classes = torch.tensor([[0, 3]] * len(batch))
    options = {"num_masks": 64, "seed": 0} if method == "rise" else {}
    on_cpu = build_method(method, classifier, **options)(batch.image, classes)
    on_gpu = build_method(method, classifier.to("cuda"), **options)(batch.image.to("cuda"), classes.to("cuda"))
    assert on_gpu.is_cuda and on_gpu.shape == on_cpu.shape
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-4)


def _cuda_precision() -> str:
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def test_a_mixed_precision_channels_last_training_run_on_cuda(tmp_path):
    import lightning.pytorch as pl

    from explainer.callbacks import Accelerate

    _, ckpt = write_classifier_checkpoint(tmp_path)
    torch.manual_seed(0)
    module = ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2}, lr=1e-3)
    data = DigitScenesDataModule(image_size=32, train_scenes=32, val_scenes=8, test_scenes=8, batch_size=8)
    losses = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            assert batch.image.is_cuda and batch.image.is_contiguous(memory_format=torch.channels_last)
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision=_cuda_precision(),
        max_steps=4,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        callbacks=[Accelerate(channels_last=True), Losses()],
    )
    trainer.fit(module, datamodule=data)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    images = next(iter(data.val_dataloader())).image.cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        masks = module.eval().maps(images)
    assert masks.is_cuda and torch.isfinite(masks.float()).all()


def test_explain_on_cuda_equals_the_cpu_and_mixed_precision_is_close(tmp_path, batch):
    import explainer
    from explainer.export import export_explainer

    _, ckpt = write_classifier_checkpoint(tmp_path)
    torch.manual_seed(0)
    module = ExplainerModule(str(ckpt), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2})
    folder = export_explainer(module, tmp_path / "export")
    on_cpu = explainer.load(folder).explain(batch.image)
    model = explainer.load(folder, map_location="cuda")
    on_gpu = model.explain(batch.image.cuda())
    assert on_gpu.is_cuda and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-4)
    mixed = model.explain(batch.image.cuda(), precision="auto-mixed")
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed.cpu(), on_cpu, rtol=0, atol=0.03)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs two GPUs")
def test_ddp_over_nccl_on_two_gpus(tmp_path, repo):
    import os
    import subprocess
    import sys

    write_classifier_checkpoint(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(repo), "WANDB_MODE": "disabled"}
    command = [
        sys.executable,
        str(repo / "train.py"),
        "fit",
        "--config",
        str(repo / "configs/quickstart/explainer.yaml"),
        "--model.init_args.classifier",
        str(tmp_path / "classifier-10.ckpt"),
        "--model.init_args.mask_net",
        "unet",
        "--model.init_args.mask_net_kwargs",
        '{"width": 4, "depth": 2}',
        "--model.init_args.encoder_from_classifier",
        "false",
        "--data.init_args.image_size",
        "32",
        "--data.init_args.train_scenes",
        "64",
        "--data.init_args.val_scenes",
        "16",
        "--data.init_args.batch_size",
        "8",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        "--trainer.callbacks.init_args.folder",
        str(tmp_path / "export"),
        "--trainer.max_steps",
        "3",
        "--trainer.accelerator",
        "gpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.precision",
        "auto-mixed",
    ]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "distributed_backend=nccl" in run.stdout + run.stderr
    assert (tmp_path / "export" / "config.json").is_file()
