"""The "prototypes" attribution method: class maps are summed prototype maps, upsampled bilinearly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from explainer.classifiers import FrozenClassifier, build_classifier
from explainer.export_prototypes import export_prototypes
from explainer.methods import available_methods, build_method
from explainer.methods.prototypes import PrototypeAttribution
from explainer.nets.prototypes import PrototypeLayer


def _setup(num_classes: int = 4, k: int = 3):
    torch.manual_seed(0)
    frozen = FrozenClassifier(build_classifier("tests.helpers:tiny_net", num_classes))
    weight = frozen.net.head[-1].weight.detach()
    protos = torch.rand(num_classes, k, weight.shape[1])
    protos = protos / protos.sum(1, keepdim=True) * weight[:, None, :]  # random shares summing to the weight
    layer = PrototypeLayer(num_classes, k, weight.shape[1])
    layer.set_prototypes(protos, frozen.net.head[-1].bias.detach())
    return frozen, layer, weight


def test_registered_and_maps_match_a_naive_computation():
    assert "prototypes" in available_methods()
    frozen, layer, weight = _setup()
    method = build_method("prototypes", classifier=frozen, prototypes=layer)
    assert isinstance(method, PrototypeAttribution)
    images = torch.randn(2, 3, 20, 24)
    classes = torch.tensor([[3, 0], [1, -1]])
    maps = method(images, classes)
    parts = method.attribute_prototypes(images, classes)
    assert maps.shape == (2, 2, 20, 24) and parts.shape == (2, 2, 3, 20, 24)
    torch.testing.assert_close(parts.sum(2), maps)
    feats = frozen.net.forward_features(images)
    for b in range(2):
        for j in range(2):
            c = int(classes[b, j])
            if c < 0:
                assert maps[b, j].abs().sum() == 0
                continue
            # the class map is the class activation map x . v (the prototypes sum to v), upsampled
            cam = torch.einsum("dhw,d->hw", feats[b], weight[c])
            expected = F.interpolate(cam[None, None], size=(20, 24), mode="bilinear", align_corners=False)[0, 0]
            torch.testing.assert_close(maps[b, j], expected, atol=1e-5, rtol=1e-4)
            for i in range(3):
                proto_map = torch.einsum("dhw,d->hw", feats[b], layer.prototypes[c, i])
                up = F.interpolate(proto_map[None, None], size=(20, 24), mode="bilinear", align_corners=False)
                torch.testing.assert_close(parts[b, j, i], up[0, 0], atol=1e-5, rtol=1e-4)


def test_loads_an_export_and_checks_the_classifier(tmp_path):
    frozen, layer, _ = _setup()
    export_prototypes(layer, tmp_path / "export", None, frozen)
    method = build_method("prototypes", classifier=frozen, prototypes=tmp_path / "export")
    torch.testing.assert_close(method.prototypes.prototypes, layer.prototypes)
    other = FrozenClassifier(build_classifier("tests.helpers:tiny_net", 4))
    with pytest.raises(ValueError, match="not the one these prototypes were fitted to"):
        build_method("prototypes", classifier=other, prototypes=tmp_path / "export")
    with pytest.raises(FileExistsError, match="already holds an export"):
        export_prototypes(layer, tmp_path / "export", None, frozen)
    with pytest.raises(FileNotFoundError, match="not a prototype export"):
        build_method("prototypes", classifier=frozen, prototypes=tmp_path)


def test_mismatched_head_and_missing_arguments():
    frozen, _, _ = _setup()
    with pytest.raises(ValueError, match="needs the classifier and a fitted prototype head"):
        build_method("prototypes", classifier=frozen)
    with pytest.raises(ValueError, match="prototype head is for 5 classes"):
        build_method("prototypes", classifier=frozen, prototypes=PrototypeLayer(5, 2, 16))
