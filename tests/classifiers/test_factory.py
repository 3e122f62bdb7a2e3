"""The classifier factory: every kind of name gives a features / pool / head split with C outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explainer.classifiers import ClassifierNet, build_classifier


@pytest.mark.parametrize(
    "name", ["digitnet", "digitnet_local", "resnet18", "mobilenet_v3_small", "tests.helpers:tiny_net"]
)
def test_names_build_classifiers_with_the_requested_class_count(name):
    net = build_classifier(name, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    assert net(x).shape == (2, 7)
    assert net.num_classes == 7
    feats = net.forward_features(x)
    assert feats.ndim == 4
    torch.testing.assert_close(net.forward_head(feats), net(x))


@pytest.mark.parametrize("name", ["digitnet", "digitnet_local"])
def test_digitnet_features_are_non_negative(name):
    net = build_classifier(name, 10).eval()
    assert (net.forward_features(torch.randn(3, 3, 64, 64)) >= 0).all()


@pytest.mark.parametrize(("name", "stride", "field"), [("digitnet", 8, 43), ("digitnet_local", 4, 19)])
def test_digitnet_stride_and_receptive_field(name, stride, field):
    """The input pixels that reach one feature location: a ``field`` px square (measured by its gradient)."""
    torch.manual_seed(0)
    net = build_classifier(name, 10).eval()
    x = torch.randn(1, 3, 96, 96, requires_grad=True)
    feats = net.forward_features(x)
    assert feats.shape[-2:] == (96 // stride, 96 // stride)
    row = col = feats.shape[-1] // 2
    feats[0, :, row, col].sum().backward()
    support = x.grad[0].abs().sum(0) > 0
    ys, xs = torch.nonzero(support, as_tuple=True)
    assert int(ys.max() - ys.min()) + 1 == field and int(xs.max() - xs.min()) + 1 == field


def test_vgg_keeps_the_papers_head():
    net = build_classifier("vgg11", 5)
    linears = [m for m in net.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(25088, 4096), (4096, 4096), (4096, 5)]


def test_opaque_user_module_is_wrapped():
    net = build_classifier("tests.helpers:opaque_net", 3)
    assert net.features is None and net(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    with pytest.raises(AttributeError, match="opaque"):
        net.forward_features(torch.randn(1, 3, 16, 16))


def test_backbone_weights_from_a_file(tmp_path):
    source = build_classifier("digitnet", 10)
    torch.save(source.features.state_dict(), tmp_path / "w.pt")
    torch.save({f"features.{k}": v for k, v in source.features.state_dict().items()}, tmp_path / "w2.pt")
    net = build_classifier("digitnet", 4, weights=str(tmp_path / "w2.pt"))
    for a, b in zip(net.features.state_dict().values(), source.features.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="matches"):
        build_classifier("digitnet", 4, weights=str(tmp_path / "w.pt"))  # keys lack the 'features.' prefix


@pytest.mark.parametrize(
    "name, message",
    [
        ("not_a_model_name_xyz", "unknown classifier|timm"),
        ("tests.helpers:missing", "cannot import"),
    ],
)
def test_unknown_names_give_clear_errors(name, message):
    with pytest.raises(ValueError, match=message):
        build_classifier(name, 3)


def test_classifier_net_is_an_nn_module():
    assert isinstance(build_classifier("digitnet", 2), ClassifierNet)


def test_unknown_names_list_every_kind_of_name_and_weights_names_need_torchvision():
    with pytest.raises(ValueError, match="register_backbone.*package.module:factory.*timm/<name>.*torchvision"):
        build_classifier("not_a_model_name_xyz", 3)
    with pytest.raises(ValueError, match="'digitnet' is not a torchvision model"):
        build_classifier("digitnet", 3, weights="IMAGENET1K_V1")


def test_a_new_architecture_source_is_one_registration(monkeypatch):
    from explainer.classifiers.factory import ARCHITECTURES, ArchitectureSource
    from tests.helpers import tiny_net

    class Zoo(ArchitectureSource):
        description = "zoo/<name>"

        def matches(self, name: str) -> bool:
            return name.startswith("zoo/")

        def architecture(self, name: str, num_classes: int) -> tuple[nn.Module, ClassifierNet]:
            net = tiny_net(num_classes)
            return net, net

    monkeypatch.setattr(ARCHITECTURES, "_entries", {"Zoo": Zoo(), **ARCHITECTURES._entries})
    assert build_classifier("zoo/anything", 5)(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert build_classifier("digitnet", 2).name == "digitnet"  # the other sources still answer
