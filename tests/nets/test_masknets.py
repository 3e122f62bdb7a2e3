"""Mask networks: shapes at any size, class-head transfer, and the classifier-initialised U-Net."""

from __future__ import annotations

import pytest
import torch

from explainer.classifiers import build_classifier
from explainer.nets import available_mask_nets, build_mask_net, transfer_class_heads


@pytest.mark.parametrize("kwargs", [{"width": 4, "depth": 2}, {"width": 4, "depth": 3, "stem_stride": 2}])
@pytest.mark.parametrize("size", [(32, 32), (30, 45)])
def test_unet_gives_logits_at_the_input_size(kwargs, size):
    net = build_mask_net("unet", 5, **kwargs)
    assert net(torch.randn(2, 3, *size)).shape == (2, 5, *size)


def test_classifier_unet_starts_from_the_classifier_features():
    classifier = build_classifier("digitnet", 10)
    with torch.no_grad():
        for p in classifier.parameters():
            p.normal_()
    net = build_mask_net("classifier_unet", 10, backbone="digitnet", width=8)
    assert net.skip_index == [1, 3, 5]  # the last layer at each of the 1/2, 1/4, 1/8 resolutions
    net.init_encoder_from(classifier)
    for a, b in zip(net.encoder.state_dict().values(), classifier.features.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert net(torch.randn(2, 3, 48, 48)).shape == (2, 10, 48, 48)
    net.encoder[0][0].weight.data.add_(1.0)  # a copy: the classifier is untouched
    assert not torch.equal(net.encoder[0][0].weight, classifier.features[0][0].weight)


def test_deeplab_is_the_papers_network():
    net = build_mask_net("deeplabv3_resnet50", 3)
    model = net.model
    assert model.aux_classifier is None
    with torch.no_grad():
        assert model.backbone.eval()(torch.randn(1, 3, 64, 64))["out"].shape[-2:] == (8, 8)  # output stride 8
    aspp = model.classifier[0]
    rates = [branch[0].dilation[0] for branch in aspp.convs[1:4]]
    assert rates == [12, 24, 36] and model.classifier[4].out_channels == 3
    assert net.eval()(torch.randn(1, 3, 40, 40)).shape == (1, 3, 40, 40)


def test_transfer_keeps_shared_rows_by_name():
    old = build_mask_net("unet", 3, width=4, depth=1)
    new = build_mask_net("unet", 2, width=4, depth=1)
    state = transfer_class_heads(new, old.state_dict(), ["a", "b", "c"], ["c", "z"])
    new.load_state_dict(state)
    torch.testing.assert_close(new.head.weight[0], old.head.weight[2])
    torch.testing.assert_close(new.stem[0].weight, old.stem[0].weight)


def test_unknown_mask_net_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid names:.*unet"):
        build_mask_net("segformer", 3)
    assert {"unet", "classifier_unet", "deeplabv3_resnet50"} <= set(available_mask_nets())
