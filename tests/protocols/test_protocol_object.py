"""The protocol object: a new protocol is one registration, and no module outside a registry compares names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import Tensor

from explainer.classifiers.factory import build_classifier
from explainer.classifiers.frozen import FrozenClassifier
from explainer.methods import METHODS
from explainer.methods.common import layer_by_role
from explainer.protocols import (
    PROTOCOLS,
    GridDataset,
    Protocol,
    ProtocolNet,
    get_protocol,
    grid_targets,
    wrap_for_protocol,
)
from explainer.protocols.grid import Candidates, score_source
from tests.protocols.test_protocols import CodedClassifier, CodedImages


class CornerNet(ProtocolNet):
    """A made-up protocol: one head per cell that only sees the cell's top-left quarter."""

    protocol = "corner"

    def forward(self, images: Tensor) -> Tensor:
        n = self.grid_size
        h, w = images.shape[-2] // n, images.shape[-1] // n
        masked = torch.zeros_like(images)
        for r in range(n):
            for c in range(n):
                masked[..., r * h : r * h + h // 2, c * w : c * w + w // 2] = images[
                    ..., r * h : r * h + h // 2, c * w : c * w + w // 2
                ]
        return self.per_cell_head(self.grid_features(self.base.features(masked)))


@pytest.fixture
def corner(monkeypatch):
    spec = Protocol(
        "corner",
        "Corner",
        per_cell=True,
        repeats=False,
        layers=("input",),
        wrapper=CornerNet,
        guarantee="each head sees a quarter of its cell",
    )
    monkeypatch.setitem(PROTOCOLS._entries, "corner", spec)
    return spec


def test_a_registered_protocol_works_through_the_wrapper_the_grids_and_the_layer_check(corner):
    torch.manual_seed(0)
    frozen = FrozenClassifier(build_classifier("tests.helpers:tiny_net", 6), class_names=list("abcdef"))
    wrapped = wrap_for_protocol(frozen, "corner", 2)
    assert isinstance(wrapped.net, CornerNet) and wrapped.net.spec is corner
    assert wrapped(torch.randn(2, 3, 32, 32)).shape == (2, 24)
    assert wrapped.class_names[6:8] == ["cell1:a", "cell1:b"]
    assert layer_by_role(wrapped, "input") is None
    with pytest.raises(ValueError, match="under Corner only the input layers hold one map per grid"):
        layer_by_role(wrapped, "middle")

    data = CodedImages()
    grids = GridDataset(
        data, Candidates(*score_source(data, CodedClassifier()), 0.9), list("abcdef"), num_grids=5, protocol="corner"
    )
    classes, _ = grids.layout(2)
    sample = grids[2]
    assert len(set(classes)) == 4  # no repeat: four distinct classes, every cell scored
    assert sample.box_labels.tolist() == [i * 6 + c for i, c in enumerate(classes)]
    labels, cells = grid_targets(
        type("B", (), {"box_labels": [sample.box_labels], "image": sample.image})(), "corner", 2
    )
    assert cells.tolist() == [[0, 1, 2, 3]] and labels.tolist() == [sample.box_labels.tolist()]
    assert corner.explained(2) == "cells 0,1,2,3" and get_protocol("difull").explained(3) == "cells 0,8"


def test_unknown_protocols_and_too_small_grids_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown protocol 'difool'; valid protocols: gridpg, difull, dipart"):
        get_protocol("difool")
    with pytest.raises(ValueError, match="grid_size must be >= 2 for difull, got 1"):
        get_protocol("difull").check_grid_size(1)
    assert get_protocol("gridpg").check_grid_size(1) == 1


def test_no_module_outside_the_registries_compares_method_or_protocol_names():
    """A method's or protocol's facts live on its class or object; code reads them, it does not test names."""
    names = sorted(set(METHODS.names()) | set(PROTOCOLS.names()), key=len, reverse=True)
    alternatives = "|".join(re.escape(n) for n in names)
    quoted = rf"""["'](?:{alternatives})["']"""
    comparison = re.compile(rf"(==|!=)\s*{quoted}|{quoted}\s*(==|!=)|\bin\s*[(\[{{][^)\]}}]*{quoted}")
    not_a_name = "tie_order"  # tie_order="rise" is RISE's order of tied pixels, an option of the causal metrics
    package = Path(__file__).resolve().parents[2] / "explainer"
    found = []
    for path in sorted(package.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0].strip()
            if code.startswith("for ") or not_a_name in code:
                continue  # iterating over a list of names chooses what to run; it tests no name
            if comparison.search(code):
                found.append(f"{path.relative_to(package.parent)}:{number}: {line.strip()}")
    assert found == []
