"""Grad-CAM and Grad-CAM++ against captum and pytorch-grad-cam; layer selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explainer.classifiers import ClassifierNet, FrozenClassifier, build_classifier
from explainer.methods import build_method, default_cam_layer
from tests.helpers import tiny_net


def _randomise_batchnorm(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so eval-mode activations are not just the conv outputs."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.2)


def _pairs(images: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, k = torch.nonzero(classes >= 0, as_tuple=True)
    return images[b], classes[b, k]


def test_gradcam_matches_captum_layer_gradcam() -> None:
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    net = build_classifier("digitnet", 5)
    _randomise_batchnorm(net)
    frozen = FrozenClassifier(net)
    images = torch.randn(3, 3, 32, 32)
    classes = torch.tensor([[0, 4], [2, -1], [3, 1]])
    maps = build_method("gradcam", frozen).attribute(images, classes)
    assert maps.shape == (3, 2, 32, 32)
    x, c = _pairs(images, classes)
    ref = captum_attr.LayerGradCam(frozen, net.features[5]).attribute(x, target=c, relu_attributions=True)
    ref = captum_attr.LayerAttribution.interpolate(ref, (32, 32), interpolate_mode="bilinear")[:, 0]
    mine = maps[classes >= 0]
    scale = ref.abs().amax(dim=(1, 2), keepdim=True)
    assert (scale > 0).all()
    torch.testing.assert_close(mine / scale, ref / scale, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["gradcam", "gradcam++"])
def test_cams_match_pytorch_grad_cam(name: str) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(1)
    net = tiny_net(4)
    _randomise_batchnorm(net, 1)
    net.eval()
    images = torch.randn(2, 3, 16, 16)
    classes = torch.tensor([[1, 3], [0, 2]])
    # a stride-1 layer: the CAM is already at input size, so pytorch-grad-cam's resize is the identity
    maps = build_method(name, net, layer="features.2").attribute(images, classes)
    cam_class = pgc.GradCAM if name == "gradcam" else pgc.GradCAMPlusPlus
    x, c = _pairs(images, classes)
    with cam_class(model=net, target_layers=[net.features[2]]) as cam:
        ref = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in c]))
    mine = maps.reshape(-1, 16, 16)
    for _ in range(2):  # pytorch-grad-cam min-max scales twice: per layer, then after merging the layers
        mine = mine - mine.amin(dim=(1, 2), keepdim=True)
        mine = mine / (1e-7 + mine.amax(dim=(1, 2), keepdim=True))
    assert ref.abs().sum() > 0
    torch.testing.assert_close(mine, ref, rtol=0, atol=1e-4)


def test_one_batched_pass_equals_one_image_at_a_time() -> None:
    torch.manual_seed(2)
    net = tiny_net(3)
    _randomise_batchnorm(net, 2)
    images = torch.randn(3, 3, 16, 16)
    classes = torch.tensor([[0, 2], [1, -1], [2, 1]])
    method = build_method("gradcam++", net, batch_size=2)
    batch = method.attribute(images, classes)
    for i in range(3):
        single = method.attribute(images[i : i + 1], classes[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], single, rtol=1e-5, atol=1e-7)


def test_default_layers() -> None:
    digit = build_classifier("digitnet", 3)
    assert default_cam_layer(digit) == "features.5"
    assert default_cam_layer(FrozenClassifier(digit)) == "net.features.5"
    resnet = build_classifier("resnet18", 3)
    assert default_cam_layer(resnet) == "features.7.1"  # layer4[-1]
    assert default_cam_layer(resnet).startswith("features.7") and resnet.features[7] is resnet.features[-1]
    vgg_like = ClassifierNet(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)), nn.Linear(4, 2))
    assert default_cam_layer(vgg_like) == "features.2"  # VGG: features[-1]
    method = build_method("gradcam", FrozenClassifier(resnet))
    assert method.layer == "net.features.7.1"
    assert method.attribute(torch.randn(1, 3, 64, 64), torch.tensor([[1]])).shape == (1, 1, 64, 64)


def test_layer_names_relative_to_the_wrapped_net_work() -> None:
    frozen = FrozenClassifier(tiny_net(3))
    images, classes = torch.randn(1, 3, 16, 16), torch.tensor([[2]])
    a = build_method("gradcam", frozen, layer="net.features.5").attribute(images, classes)
    b = build_method("gradcam", frozen, layer="features.5").attribute(images, classes)
    torch.testing.assert_close(a, b)


def test_unknown_layer_lists_candidates() -> None:
    with pytest.raises(ValueError, match=r"unknown layer 'net\.features\.9'.*net\.features\.5"):
        build_method("gradcam", FrozenClassifier(tiny_net(3)), layer="net.features.9")


def test_opaque_model_needs_an_explicit_layer() -> None:
    opaque = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="pass layer=<name>, one of: 0, 1, 2"):
        build_method("gradcam", opaque)
    maps = build_method("gradcam", opaque, layer="1").attribute(torch.randn(1, 3, 10, 10), torch.tensor([[1]]))
    assert maps.shape == (1, 1, 10, 10)
