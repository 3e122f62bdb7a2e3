"""Every way to name the classifier to explain trains an Explainer, leaves the classifier bit-identical and
exports an Explainer that loads and explains; the adapter options and the bad-input errors."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import explainer
from explainer.callbacks import ExportExplainer
from explainer.classifiers import digitnet, state_hash
from explainer.classifiers.frozen import ClassifierCheckError
from explainer.classifiers.source import ClassifierSpec, OutputAdapter, load_classifier
from explainer.data.digits import DigitScenesDataModule
from explainer.modules import ExplainerModule
from tests.helpers import tiny_net, write_classifier_checkpoint

MASK_NET = {"mask_net": "unet", "mask_net_kwargs": {"width": 4, "depth": 2}}
NAMES = [str(i) for i in range(10)]


def _dm(**kw):
    args = dict(image_size=32, train_scenes=16, val_scenes=8, test_scenes=8, batch_size=8)
    return DigitScenesDataModule(**{**args, **kw})


def _trained_like(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights with non-trivial BatchNorm statistics, then eval mode (as a trained model is saved)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        net.train()(torch.randn(16, 3, 32, 32) * 2 + 0.5)
    return net.eval()


def _train_and_export(spec, tmp_path, **kw):
    """A few steps of Explainer training; returns (module, export folder)."""
    module = ExplainerModule(spec, num_classes=10, class_names=NAMES, **MASK_NET, **kw)
    folder = tmp_path / "export"
    trainer = pl.Trainer(
        max_steps=3,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        enable_checkpointing=False,
        callbacks=[ExportExplainer(folder=str(folder))],
    )
    trainer.fit(module, datamodule=_dm())
    assert trainer.global_step == 3
    return module, folder


def _check_route(spec, tmp_path, hash_of, **kw):
    """The route trains, the classifier's hash is unchanged and recorded, and the export explains."""
    before = hash_of()
    module, folder = _train_and_export(spec, tmp_path, **kw)
    assert hash_of() == before
    assert module.classifier.content_hash == state_hash(module.classifier.net)
    config = json.loads((folder / "config.json").read_text())
    assert config["classifier"]["sha256"] == module.classifier.content_hash
    images = next(iter(_dm().test_dataloader())).image
    masks = explainer.load(folder).explain(images)
    assert masks.shape == (8, 10, 32, 32) and bool(((masks >= 0) & (masks <= 1)).all())
    return module, config


def test_route_classifier_module_checkpoint(tmp_path):
    _, path = write_classifier_checkpoint(tmp_path)
    module, _ = _check_route(str(path), tmp_path, lambda: state_hash(load_classifier(str(path)).net))
    assert module.classifier.reference == str(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_route_architecture_name_and_weights_file(tmp_path, suffix):
    net = _trained_like(digitnet(10))
    path = tmp_path / f"digitnet{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    else:
        torch.save(net.state_dict(), path)
    spec = {"source": "digitnet", "weights": str(path)}
    module, config = _check_route(spec, tmp_path, lambda: state_hash(net))
    assert state_hash(module.classifier.net) == state_hash(net)  # the file's weights, all of them
    assert config["classifier"]["spec"] == spec


def test_route_torchvision_architecture_with_a_plain_state_dict(tmp_path):
    import torchvision

    net = _trained_like(torchvision.models.resnet18(num_classes=10))
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)  # the keys of torchvision's own model (conv1, layer1, fc, ...)
    module, _ = _check_route({"source": "resnet18", "weights": str(path)}, tmp_path, lambda: state_hash(net))
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(module.classifier(images), net(images))


def test_route_user_factory_and_weights(tmp_path):
    net = _trained_like(tiny_net(10))
    path = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), path)
    module, _ = _check_route(
        {"source": "tests.helpers:tiny_net", "weights": str(path)}, tmp_path, lambda: state_hash(net)
    )
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(module.classifier(images), net(images))


class TwoOutputs(nn.Module):
    """A third-party-style model: returns (features, probabilities)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(8, num_classes)
        self.aux = nn.Linear(8, 3)  # the last Linear is not the class output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.aux(h), torch.sigmoid(self.fc(h))


def test_route_torchscript_with_a_tuple_of_probabilities(tmp_path):
    net = _trained_like(TwoOutputs())
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(net), str(path))
    spec = {"source": str(path), "output": 1, "returns": "probabilities"}
    loaded = load_classifier(spec)
    module, config = _check_route(spec, tmp_path, lambda: state_hash(loaded.net))
    images = torch.randn(2, 3, 32, 32)
    expected = torch.logit(net(images)[1].clamp(1e-6, 1 - 1e-6))
    torch.testing.assert_close(module.classifier(images), expected, atol=1e-4, rtol=1e-4)
    assert config["classifier"]["adapter"]["returns"] == "probabilities"
    assert module.classifier.num_classes == 10  # counted from the output, not from the last Linear (aux: 3)


@pytest.mark.parametrize("dynamic", [True, False])
def test_route_torch_export_program(tmp_path, dynamic):
    net = _trained_like(digitnet(10))
    path = tmp_path / "model.pt2"
    sample = torch.zeros(8, 3, 32, 32) if dynamic else torch.zeros(1, 3, 32, 32)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(net, (sample,), dynamic_shapes=shapes), str(path))
    loaded = load_classifier(str(path))
    assert loaded.net.static_batch == (None if dynamic else 1) and loaded.net.input_size == (32, 32)
    module, _ = _check_route(str(path), tmp_path, lambda: state_hash(loaded.net))
    images = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(module.classifier(images), net(images), atol=1e-5, rtol=1e-5)


def test_route_in_memory_module_with_a_dict_output_and_its_own_normalisation(tmp_path):
    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = digitnet(10)

        def forward(self, x):
            return {"logits": self.net(x), "embedding": x.mean((2, 3))}

    model = _trained_like(DictModel())
    frozen = explainer.classifier(model, output="logits", mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    module, config = _check_route(frozen, tmp_path, lambda: state_hash(model))
    assert config["classifier"]["adapter"]["mean"] == [0.5, 0.5, 0.5]
    assert module.hparams.classifier["source"] == "<in-memory DictModel>"
    # the data module's images (ImageNet-normalised) reach the model normalised with its own mean / std
    dm = _dm()
    images = next(iter(dm.test_dataloader())).image
    pixels = images * torch.tensor(dm.std).view(1, 3, 1, 1) + torch.tensor(dm.mean).view(1, 3, 1, 1)
    torch.testing.assert_close(module.classifier(images), model((pixels - 0.5) / 0.25)["logits"], atol=1e-4, rtol=1e-4)
    # loading a checkpoint of it needs the model again, and a clear error says so
    with pytest.raises(ValueError, match="in memory"):
        load_classifier(module.hparams.classifier["source"])


def test_in_memory_module_runs_with_trainer_fit_and_explainer_fit(tmp_path):
    model = _trained_like(digitnet(10))
    before = state_hash(model)
    exp = explainer.fit(
        classifier=model,
        datamodule=_dm(),
        export=tmp_path / "mine",
        max_epochs=1,
        trainer={
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
        },
        **MASK_NET,
    )
    assert state_hash(model) == before
    assert exp.explain(torch.randn(2, 3, 32, 32)).shape == (2, 10, 32, 32)
    assert not model.training and all(not p.requires_grad for p in model.parameters())


# -- the adapter -------------------------------------------------------------------------------------------
def test_adapter_turns_probabilities_and_log_probabilities_into_logits():
    z = torch.randn(4, 5) * 3
    for activation, p, lp in (
        ("sigmoid", torch.sigmoid(z), torch.nn.functional.logsigmoid(z)),
        ("softmax", torch.softmax(z, 1), torch.log_softmax(z, 1)),
    ):
        a = OutputAdapter(returns="probabilities", activation=activation)
        b = OutputAdapter(returns="log_probabilities", activation=activation)
        if activation == "sigmoid":
            torch.testing.assert_close(a.to_logits(p), z, atol=1e-3, rtol=1e-3)
            torch.testing.assert_close(b.to_logits(lp), z, atol=1e-3, rtol=1e-3)
        else:  # softmax logits are defined up to a per-image constant
            torch.testing.assert_close(torch.softmax(a.to_logits(p), 1), p)
            torch.testing.assert_close(torch.softmax(b.to_logits(lp), 1), p)
    # probabilities of exactly 0 or 1 stay finite (clamped)
    assert torch.isfinite(OutputAdapter(returns="probabilities").to_logits(torch.tensor([[0.0, 1.0]]))).all()


def test_spec_options_are_checked_by_name():
    with pytest.raises(ValueError, match="unknown classifier option.*'retruns'"):
        ClassifierSpec.parse({"source": "digitnet", "retruns": "logits"})
    with pytest.raises(ValueError, match="returns='scores'.*logits, probabilities, log_probabilities"):
        OutputAdapter(returns="scores")
    with pytest.raises(ValueError, match="mean and std go together"):
        OutputAdapter(mean=(0.5, 0.5, 0.5))


# -- bad input ------------------------------------------------------------------------------------------
def test_an_output_that_is_not_b_by_c_names_the_shape_and_the_option(tmp_path):
    frozen = explainer.classifier(_trained_like(TwoOutputs()))
    with pytest.raises(ValueError, match=r"tuple of 2 outputs \(\[0\] \(2, 3\), \[1\] \(2, 10\)\).*output: <index>"):
        frozen.verify(torch.randn(2, 3, 32, 32))

    class Spatial(nn.Module):
        def forward(self, x):
            return x[:, :1].repeat(1, 10, 1, 1)

    spatial = explainer.classifier(nn.Sequential(nn.Conv2d(3, 3, 1), Spatial()))
    with pytest.raises(ClassifierCheckError, match=r"gives \(2, 10, 32, 32\).*needs class scores \[B, C\]"):
        spatial.verify(torch.randn(2, 3, 32, 32))


def test_class_names_that_differ_list_both(tmp_path):
    _, path = write_classifier_checkpoint(tmp_path, class_names=[f"c{i}" for i in range(10)])
    with pytest.raises(ValueError, match=r"(?s)classifier \(10\): \['c0'.*data \(10\): \['0'"):
        ExplainerModule(str(path), num_classes=10, class_names=NAMES, **MASK_NET)
    with pytest.raises(ValueError, match=r"(?s)classifier \(3\).*data \(10\)"):
        ExplainerModule(
            explainer.classifier(digitnet(3), class_names=["a", "b", "c"]),
            num_classes=10,
            class_names=NAMES,
            **MASK_NET,
        )


def test_a_weights_file_matching_part_of_the_network_needs_the_explicit_option(tmp_path):
    net = digitnet(10)
    partial = {k: v for k, v in net.state_dict().items() if not k.startswith("head.")}
    torch.save(partial, tmp_path / "backbone.pt")
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pt")
    spec = {"source": "digitnet", "weights": str(tmp_path / "backbone.pt")}
    total = len(net.state_dict())
    with pytest.raises(
        ValueError,
        match=rf"fills only {len(partial)} of the {total} tensors.*missing: head.weight"
        r".*allow_partial_weights: true",
    ):
        load_classifier(spec, num_classes=10)
    loaded = load_classifier({**spec, "allow_partial_weights": True}, num_classes=10)
    torch.testing.assert_close(loaded.net.features[0][0].weight, net.features[0][0].weight)
    with pytest.raises(ValueError, match="no tensor of .*other.pt matches"):
        load_classifier({"source": "digitnet", "weights": str(tmp_path / "other.pt")}, num_classes=10)
    # a 1000-class head for 10 classes: the shape mismatch is named
    big = digitnet(1000).state_dict()
    torch.save(big, tmp_path / "big.pt")
    with pytest.raises(ValueError, match=r"shape mismatches .*head.weight \(1000, 128\) vs \(10, 128\)"):
        load_classifier({"source": "digitnet", "weights": str(tmp_path / "big.pt")}, num_classes=10)
    with pytest.raises(ValueError, match="give its trained weights"):
        load_classifier("digitnet", num_classes=10)
    with pytest.raises(ValueError, match="holds no architecture"):
        load_classifier(str(tmp_path / "backbone.pt"), num_classes=10)


def test_programs_that_cannot_take_the_data_size_say_which_size_they_want(tmp_path):
    class Fixed(nn.Module):  # a flattening head: only 28x28 inputs fit
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 28 * 28, 10)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    net = Fixed().eval()
    ts = tmp_path / "fixed.ts"
    torch.jit.save(torch.jit.script(net), str(ts))
    with pytest.raises(ClassifierCheckError, match=r"fails on 32x32 images.*takes 28x28.*input_size: \[28, 28\]"):
        load_classifier(str(ts)).verify(torch.randn(2, 3, 32, 32))
    resized = load_classifier({"source": str(ts), "input_size": [28, 28]})
    assert resized.verify(torch.randn(2, 3, 32, 32)) == 10
    pt2 = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 28, 28),)), str(pt2))
    with pytest.raises(ValueError, match=r"takes 28x28 images.*got 32x32.*input_size: \[28, 28\]"):
        load_classifier(str(pt2)).verify(torch.randn(2, 3, 32, 32))
    assert load_classifier({"source": str(pt2), "input_size": [28, 28]}).verify(torch.randn(2, 3, 32, 32)) == 10


def test_the_freeze_check_refuses_a_classifier_that_moves_or_passes_no_gradient(tmp_path):
    net = digitnet(10)
    ts = tmp_path / "train_mode.ts"
    torch.jit.save(torch.jit.trace(net.train(), torch.zeros(2, 3, 32, 32)), str(ts))  # traced in training mode
    frozen = load_classifier(str(ts))
    before = state_hash(frozen.net)
    with pytest.raises(ClassifierCheckError, match="changed its own state.*BatchNorm"):
        frozen.verify(torch.randn(2, 3, 32, 32))
    assert state_hash(frozen.net) == before  # restored

    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 10)

        def forward(self, x):
            return self.fc(x.detach().mean((2, 3)))

    with pytest.raises(ClassifierCheckError, match="no gradient back to its input"):
        explainer.classifier(Detached()).verify(torch.randn(2, 3, 32, 32))


def test_the_encoder_starts_from_the_features_of_any_copy_of_the_architecture(tmp_path):
    """``encoder_from_classifier`` reads the features by name and shape: a TorchScript or ``torch.export`` copy
    of digitnet fills the encoder as the module does; another architecture is an error naming the fix."""
    from explainer.nets.masknets import build_mask_net

    net = _trained_like(digitnet(num_classes=10))
    torch.jit.save(torch.jit.trace(net, torch.randn(1, 3, 32, 32)), tmp_path / "d.ts")
    torch.export.save(torch.export.export(net, (torch.randn(2, 3, 32, 32),)), tmp_path / "d.pt2")
    expected = net.features.state_dict()
    for source in (net, str(tmp_path / "d.ts"), str(tmp_path / "d.pt2")):
        frozen = load_classifier(source, num_classes=10)
        mask_net = build_mask_net("classifier_unet", 10, backbone="digitnet", width=4)
        mask_net.init_encoder_from(frozen.net)
        got = mask_net.encoder.state_dict()
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    with pytest.raises(ValueError, match="encoder_from_classifier: false"):
        build_mask_net("classifier_unet", 10, backbone="digitnet", width=4).init_encoder_from(tiny_net(10))


def test_explainer_classifier_takes_a_sub_config_and_names_missing_pretrained_weights(tmp_path, monkeypatch):
    """``explainer.classifier({...})`` takes the YAML form; torchvision weights that are neither cached nor
    downloadable are an error naming the cache file and the state-dict route (the download is stubbed: tests
    never reach the network)."""
    import urllib.error

    net = _trained_like(digitnet(num_classes=10))
    torch.save(net.state_dict(), tmp_path / "d.pt")
    frozen = explainer.classifier(
        {"source": "digitnet", "weights": str(tmp_path / "d.pt")}, num_classes=10, returns="logits"
    )
    assert frozen.content_hash == state_hash(net)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    import torchvision.models._api as torchvision_weights

    monkeypatch.setattr(torchvision_weights, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"not in torch's cache .*resnet18-.*\.pth.*weights: my_weights.pth"):
        explainer.classifier({"source": "resnet18", "weights": "IMAGENET1K_V1"})
