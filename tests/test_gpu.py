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
