"""The prototype layer, the head check and the closed-form decomposition against naive references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explainer.classifiers import ClassifierNet, FrozenClassifier, build_classifier
from explainer.nets.prototype_fit import (
    LocationReservoir,
    alignment_loss,
    decompose_class,
    refine_residual,
)
from explainer.nets.prototypes import PrototypeLayer, pooled_linear_head


def test_layer_matches_a_loop_and_is_complete():
    torch.manual_seed(0)
    layer = PrototypeLayer(3, 2, 4)
    layer.set_prototypes(torch.randn(3, 2, 4), torch.randn(3))
    feats = torch.rand(2, 4, 3, 5)
    logits, maps, contrib = layer(feats)
    assert maps.shape == (2, 3, 2, 3, 5) and contrib.shape == (2, 3, 2) and logits.shape == (2, 3)
    for b in range(2):
        for c in range(3):
            for i in range(2):
                for y in range(3):
                    for x in range(5):
                        expected = float(feats[b, :, y, x] @ layer.prototypes[c, i])
                        assert maps[b, c, i, y, x].item() == pytest.approx(expected, abs=1e-6)
    # completeness: the mean of the summed maps plus the bias is the logit
    torch.testing.assert_close(maps.sum(2).mean((-2, -1)) + layer.bias, logits)
    torch.testing.assert_close(contrib, maps.mean((-2, -1)))
    picked = layer.maps(feats, torch.tensor([[2, -1], [0, 1]]))
    torch.testing.assert_close(picked[0, 0], maps[0, 2])
    assert picked[0, 1].abs().sum() == 0
    torch.testing.assert_close(picked[1], maps[1, :2])


def test_equal_split_initialisation_is_exact():
    weight, bias = torch.randn(4, 6), torch.randn(4)
    layer = PrototypeLayer(4, 3, 6, weight, bias)
    feats = torch.rand(2, 6, 2, 2)
    torch.testing.assert_close(layer(feats)[0], feats.mean((-2, -1)) @ weight.T + bias)


def test_pooled_linear_head_accepts_linear_heads():
    for name in ("digitnet", "tests.helpers:tiny_net"):
        net = build_classifier(name, 5)
        weight, bias = pooled_linear_head(FrozenClassifier(net))
        assert weight.shape[0] == 5 and bias.shape == (5,)


def test_pooled_linear_head_refuses_other_heads():
    with pytest.raises(ValueError, match="not linear over globally pooled features"):
        with torch.device("meta"):  # the paper's 25088-4096-4096-C head, without allocating its weights
            vgg = build_classifier("vgg11", 4)
        pooled_linear_head(vgg)
    mlp = ClassifierNet(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    )
    with pytest.raises(ValueError, match="several or non-linear layers"):
        pooled_linear_head(mlp)
    with pytest.raises(ValueError, match="no separate feature extractor"):
        pooled_linear_head(build_classifier("tests.helpers:opaque_net", 2))


def _features(n: int = 600, d: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=gen, dtype=torch.float64).pow(3)


def test_decomposition_sums_to_the_weight_row():
    v = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dec = decompose_class(_features(), v, k=4)
    assert dec.num_prototypes == 4 and dec.prototypes.shape == (4, 12)
    assert (dec.prototypes.sum(0) - v).abs().max() < 1e-12
    assert (dec.prototypes.float().sum(0) - v.float()).abs().max() < 1e-5
    assert torch.all(dec.components >= 0)
    # alpha is the least-squares scaling: the residual is orthogonal to the components
    assert (dec.components @ dec.residual).abs().max() < 1e-10


def _naive_alignment_loss(feats, comps, alpha, split, ridge):
    """The refinement loss written over the maps themselves (one prototype at a time)."""
    n = feats.shape[0]
    eps = 1e-9 * float(torch.diagonal(feats.T @ feats / n).mean())
    scales = [float(alpha[i] ** 2 * (feats @ comps[i]).square().mean()) for i in range(len(alpha))]
    floor = 1e-6 * sum(scales) / len(scales)
    total, shape = 0.0, 0.0
    for i in range(len(alpha)):
        a = feats @ comps[i]
        a_hat = a / a.norm()
        m = feats @ split[i]
        orth = m - a_hat * (a_hat @ m)
        s = max(scales[i], floor)
        total += (float(orth @ orth) / n + ridge * float(m @ m) / n + eps * float(split[i] @ split[i])) / s
        shape += float(orth @ orth) / n / s
    return total, shape


def test_refinement_lowers_the_alignment_loss_relative_to_an_equal_split():
    feats = _features()
    v = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    dec = decompose_class(feats, v, k=4, ridge=0.1)
    alpha, comps = dec.alpha, dec.components
    fitted = dec.prototypes - alpha[:, None] * comps
    equal = dec.residual.expand(4, -1) / 4
    torch.testing.assert_close(fitted.sum(0), dec.residual)
    loss_fit, shape_fit = _naive_alignment_loss(feats, comps, alpha, fitted, 0.1)
    loss_eq, shape_eq = _naive_alignment_loss(feats, comps, alpha, equal, 0.1)
    assert loss_fit == pytest.approx(dec.alignment_loss, rel=1e-8)
    assert loss_eq == pytest.approx(dec.equal_split_loss, rel=1e-8)
    assert loss_fit < loss_eq and shape_fit < shape_eq
    # and it is the constrained minimum: no sum-preserving perturbation does better
    gram = feats.T @ feats / feats.shape[0]
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        delta = torch.randn(4, 12, generator=gen, dtype=torch.float64) * 1e-2
        delta -= delta.mean(0)
        assert float(alignment_loss(gram, comps, alpha, fitted + delta)) > dec.alignment_loss


def test_refine_residual_splits_exactly():
    gram = _features(50, 6).T @ _features(50, 6) / 50
    comps = torch.rand(3, 6, dtype=torch.float64)
    residual = torch.randn(6, dtype=torch.float64)
    split = refine_residual(gram, comps, torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64), residual)
    assert (split.sum(0) - residual).abs().max() < 1e-12 and torch.isfinite(split).all()


def test_few_locations_and_all_zero_features_pad_with_zero_prototypes():
    v = torch.randn(8, dtype=torch.float64)
    few = decompose_class(torch.rand(2, 8, dtype=torch.float64), v, k=5)
    assert few.num_prototypes <= 2 and "of 5 prototypes" in few.note
    assert torch.isfinite(few.prototypes).all() and few.prototypes[few.num_prototypes :].abs().sum() == 0
    assert (few.prototypes.sum(0) - v).abs().max() < 1e-10
    zero = decompose_class(torch.zeros(30, 8, dtype=torch.float64), v, k=5)
    assert zero.num_prototypes == 1 and "no non-zero" in zero.note
    torch.testing.assert_close(zero.prototypes[0], v)
    assert zero.prototypes[1:].abs().sum() == 0
    empty = decompose_class(torch.zeros(0, 8, dtype=torch.float64), v, k=3)
    torch.testing.assert_close(empty.prototypes.sum(0), v)


def test_reservoir_is_the_bottom_k_sample_of_the_offered_locations():
    gen = torch.Generator().manual_seed(5)
    batches = [
        (torch.rand(3, 4, 2, 2, generator=gen), (torch.rand(3, 2, generator=gen) > 0.4).float()) for _ in range(4)
    ]
    batches[0][0][0, :, 0, 0] = 0  # an all-zero location is never stored
    full = LocationReservoir(2, 4, capacity=1000, seed=9)
    small = LocationReservoir(2, 4, capacity=5, seed=9)
    for feats, labels in batches:
        full.add(feats, labels)
        small.add(feats, labels)
    # naive reference: the same keys, drawn in the same order, then the 5 smallest per class
    key_gen = torch.Generator().manual_seed(9)
    keyed = {0: [], 1: []}
    for feats, labels in batches:
        locs = feats.permute(0, 2, 3, 1).reshape(-1, 4).double()
        keys = torch.rand(2, locs.shape[0], generator=key_gen, dtype=torch.float64)
        for c in range(2):
            for j in range(locs.shape[0]):
                if labels[j // 4, c] > 0.5 and locs[j].sum() > 0:
                    keyed[c].append((float(keys[c, j]), locs[j]))
    for c in range(2):
        expect_all = torch.stack([x for _, x in keyed[c]])
        got_all = full.class_features(c)
        assert got_all.shape == expect_all.shape
        torch.testing.assert_close(got_all[torch.argsort(got_all[:, 0])], expect_all[torch.argsort(expect_all[:, 0])])
        expect = torch.stack([x for _, x in sorted(keyed[c], key=lambda t: t[0])[:5]])
        got = small.class_features(c)
        torch.testing.assert_close(got[torch.argsort(got[:, 0])], expect[torch.argsort(expect[:, 0])])
        assert int(full.offered[c]) == sum(4 * int(lab[:, c].gt(0.5).sum()) for _, lab in batches)


def test_reservoir_refuses_negative_features():
    reservoir = LocationReservoir(2, 3, capacity=10)
    with pytest.raises(ValueError, match="non-negative features"):
        reservoir.add(torch.randn(2, 3, 2, 2), torch.ones(2, 2))


def test_reservoir_storage_grows_with_what_is_offered():
    reservoir = LocationReservoir(200, 8, capacity=16384)
    assert reservoir.allocated == 0 and reservoir.features.numel() == 0
    labels = torch.zeros(4, 200)
    labels[:, 3] = 1
    reservoir.add(torch.rand(4, 8, 3, 3) + 0.1, labels)  # 36 locations offered to class 3 only
    assert reservoir.allocated == 36 and reservoir.class_features(3).shape == (36, 8)
    assert reservoir.class_features(0).shape == (0, 8)
    for _ in range(3):
        reservoir.add(torch.rand(4, 8, 3, 3) + 0.1, labels)
    assert reservoir.allocated == 144 and reservoir.class_features(3).shape == (144, 8)
    capped = LocationReservoir(2, 8, capacity=50)
    for _ in range(4):
        capped.add(torch.rand(4, 8, 3, 3) + 0.1, torch.ones(4, 2))
    assert capped.allocated == 50 and capped.class_features(1).shape == (50, 8)


def test_merging_reservoirs_of_different_sizes_keeps_the_smallest_keys():
    a, b = LocationReservoir(2, 3, capacity=40, seed=1), LocationReservoir(2, 3, capacity=40, seed=2)
    a.add(torch.rand(2, 3, 2, 2) + 0.1, torch.ones(2, 2))  # 8 locations per class
    for _ in range(6):
        b.add(torch.rand(2, 3, 2, 2) + 0.1, torch.ones(2, 2))  # 48 offered, 40 kept
    assert a.allocated == 8 and b.allocated == 40
    expected = torch.cat([a.keys, b.keys], 1).sort(1).values[:, :40]
    a.merge(b.keys[None], b.features[None])
    assert a.allocated == 40 and torch.equal(a.keys.sort(1).values, expected)
    assert a.class_features(0).shape == (40, 3)
