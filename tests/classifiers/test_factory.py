"""The classifier factory: every kind of name gives a features / pool / head split with C outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explainer.classifiers import ClassifierNet, build_classifier


@pytest.mark.parametrize("name", ["digitnet", "resnet18", "mobilenet_v3_small", "tests.helpers:tiny_net"])
def test_names_build_classifiers_with_the_requested_class_count(name):
    net = build_classifier(name, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    assert net(x).shape == (2, 7)
    assert net.num_classes == 7
    feats = net.forward_features(x)
    assert feats.ndim == 4
    torch.testing.assert_close(net.forward_head(feats), net(x))


def test_digitnet_features_are_non_negative():
    net = build_classifier("digitnet", 10).eval()
    assert (net.forward_features(torch.randn(3, 3, 64, 64)) >= 0).all()


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


@pytest.mark.parametrize("name, message", [
    ("not_a_model_name_xyz", "unknown classifier|timm"),
    ("tests.helpers:missing", "cannot import"),
])
def test_unknown_names_give_clear_errors(name, message):
    with pytest.raises(ValueError, match=message):
        build_classifier(name, 3)


def test_classifier_net_is_an_nn_module():
    assert isinstance(build_classifier("digitnet", 2), ClassifierNet)
