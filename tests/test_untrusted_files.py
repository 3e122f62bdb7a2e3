"""Hostile artefacts: no file that the project loads can make it import or call code.

Every trial puts a module ``evil_<id>`` on ``sys.path`` (as a downloaded folder beside the working directory
would be) whose import writes a marker file, places a file naming it where the project loads files, loads
it, and checks that the load is refused with a message naming the file and the fix, and that the marker
never appears.
"""

from __future__ import annotations

import json
import sys
import uuid

import pytest
import torch
from safetensors.torch import save_file

import explainer
from explainer.classifiers import FrozenClassifier, UntrustedFactoryError, register_backbone
from explainer.export import export_explainer
from explainer.export_prototypes import load_prototype_classifier
from explainer.modules import ExplainerModule
from tests.helpers import tiny_net, write_classifier_checkpoint


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """``(module name, marker path)``: a module whose import (or factory call) writes the marker."""
    monkeypatch.delenv("EXPLAINER_ALLOW_FACTORIES", raising=False)
    name = f"evil_{uuid.uuid4().hex[:8]}"
    code = tmp_path / "code"
    code.mkdir()
    marker = tmp_path / "MARKER"
    (code / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "def factory(num_classes):\n    raise SystemExit('called')\n"
        "class Thing:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(code))
    yield name, marker
    assert not marker.exists(), "the hostile module was imported"
    assert name not in sys.modules


def _classifier_with_backbone(folder, backbone: str):
    """A ClassifierModule checkpoint whose recorded backbone is ``backbone``."""
    folder.mkdir(parents=True, exist_ok=True)
    _, path = write_classifier_checkpoint(folder)
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["backbone"] = backbone
    torch.save(ckpt, path)
    return path


def _honest_export(tmp_path):
    _, ckpt = write_classifier_checkpoint(tmp_path / "honest")
    module = ExplainerModule(
        str(ckpt), mask_net="classifier_unet", mask_net_kwargs={"backbone": "tests.helpers:tiny_net", "width": 4}
    )
    return module, export_explainer(module, tmp_path / "export")


def test_classifier_checkpoint_backbone(evil, tmp_path):
    name, _ = evil
    path = _classifier_with_backbone(tmp_path / "c", f"{name}:factory")
    with pytest.raises(
        UntrustedFactoryError,
        match=rf"the checkpoint .*c/classifier-10.ckpt \(hyper_parameters"
        rf"\.backbone\) names the classifier factory '{name}:factory'",
    ):
        FrozenClassifier.from_checkpoint(path)
    with pytest.raises(UntrustedFactoryError, match="register_backbone"):
        ExplainerModule(str(path))


def test_a_standard_library_module_is_not_imported_either(evil, tmp_path):
    sys.modules.pop("this", None)
    path = _classifier_with_backbone(tmp_path / "c", "this:s")
    with pytest.raises(UntrustedFactoryError, match="'this:s'"):
        FrozenClassifier.from_checkpoint(path)
    assert "this" not in sys.modules


def test_evaluate_classifier_option(evil, tmp_path, repo):
    from explainer.evaluation.cli import main

    name, _ = evil
    path = _classifier_with_backbone(tmp_path / "c", f"{name}:factory")
    with pytest.raises(UntrustedFactoryError, match="EXPLAINER_ALLOW_FACTORIES"):
        main(
            [
                "--data",
                str(repo / "configs/data/digits.yaml"),
                "--data-arg",
                "image_size=32",
                "--data-arg",
                "test_scenes=4",
                "--classifier",
                str(path),
                "--methods",
                "centre",
                "--out",
                str(tmp_path / "out"),
                "--trainer.enable_progress_bar",
                "false",
            ]
        )
    assert not (tmp_path / "out" / "results.json").exists()


def test_export_config_names_a_factory(evil, tmp_path, monkeypatch):
    name, _ = evil
    monkeypatch.setenv("EXPLAINER_ALLOW_FACTORIES", "tests.helpers:tiny_net")
    _, folder = _honest_export(tmp_path)
    monkeypatch.delenv("EXPLAINER_ALLOW_FACTORIES")
    config = json.loads((folder / "config.json").read_text())
    config["mask_net"]["kwargs"]["backbone"] = f"{name}:factory"
    (folder / "config.json").write_text(json.dumps(config))
    (folder / f"{name}.py").write_text("raise SystemExit('a module beside the export')\n")
    with pytest.raises(
        UntrustedFactoryError,
        match=rf"the export .*config.json names the classifier factory "
        rf"'{name}:factory'",
    ):
        explainer.load(folder)


def test_explainer_checkpoint_names_a_factory(evil, tmp_path, monkeypatch):
    name, _ = evil
    monkeypatch.setenv("EXPLAINER_ALLOW_FACTORIES", "tests.helpers:tiny_net")
    module, _ = _honest_export(tmp_path)
    monkeypatch.delenv("EXPLAINER_ALLOW_FACTORIES")
    path = tmp_path / "explainer.ckpt"
    hp = dict(module.hparams)
    hp["mask_net_kwargs"] = {**hp["mask_net_kwargs"], "backbone": f"{name}:factory"}
    hp["_class_path"] = "explainer.modules.ExplainerModule"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hp}, path)
    with pytest.raises(UntrustedFactoryError, match=r"the checkpoint .*explainer.ckpt names"):
        explainer.load(path)


def test_prototype_export_refers_to_a_hostile_classifier(evil, tmp_path):
    name, _ = evil
    path = _classifier_with_backbone(tmp_path / "c", f"{name}:factory")
    folder = tmp_path / "prototypes"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "format": "explainer-prototypes",
                "num_classes": 10,
                "prototypes_per_class": 1,
                "feature_dim": 4,
                "classifier": {"reference": str(path), "content_hash": "0" * 64},
            }
        )
    )
    save_file(
        {"prototypes": torch.zeros(10, 1, 4), "bias": torch.zeros(10), "num_prototypes": torch.ones(10)},
        str(folder / "model.safetensors"),
    )
    with pytest.raises(UntrustedFactoryError, match="hyper_parameters.backbone"):
        load_prototype_classifier(folder)


def test_train_ckpt_path_with_a_hostile_class_path(evil, tmp_path, repo, tiny_digits_args, in_tmp):
    from explainer.cli import make_cli

    name, _ = evil
    _, path = write_classifier_checkpoint(tmp_path / "c")
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = f"{name}.Thing"
    torch.save(ckpt, path)
    config = str(repo / "configs/quickstart/classifier.yaml")
    with pytest.raises(ValueError, match=rf"names the model class '{name}.Thing'; only the project's modules"):
        make_cli(["fit", "--config", config, *tiny_digits_args, "--ckpt_path", str(path)])


def test_train_ckpt_path_with_a_hostile_backbone(evil, tmp_path, repo, tiny_digits_args, in_tmp):
    from explainer.cli import make_cli

    name, _ = evil
    path = _classifier_with_backbone(tmp_path / "c", f"{name}:factory")
    config = str(repo / "configs/quickstart/classifier.yaml")
    with pytest.raises(UntrustedFactoryError, match=r"\(hyper_parameters.backbone\) names the classifier factory"):
        make_cli(["fit", "--config", config, *tiny_digits_args, "--ckpt_path", str(path)])


def test_train_ckpt_path_of_another_module_is_refused(tmp_path, repo, tiny_digits_args, in_tmp):
    from explainer.cli import make_cli

    _, path = write_classifier_checkpoint(tmp_path / "c")
    config = str(repo / "configs/quickstart/explainer.yaml")
    with pytest.raises(ValueError, match="is a checkpoint of ClassifierModule, but the config trains ExplainerModule"):
        make_cli(
            [
                "fit",
                "--config",
                config,
                *tiny_digits_args,
                "--model.init_args.classifier",
                str(path),
                "--ckpt_path",
                str(path),
            ]
        )


def test_allowed_and_registered_factories_load(tmp_path, monkeypatch):
    monkeypatch.delenv("EXPLAINER_ALLOW_FACTORIES", raising=False)
    _, path = write_classifier_checkpoint(tmp_path)
    with pytest.raises(UntrustedFactoryError):
        FrozenClassifier.from_checkpoint(path)
    assert FrozenClassifier.from_checkpoint(path, allow_factories=["tests.helpers:tiny_net"]).num_classes == 10
    monkeypatch.setenv("EXPLAINER_ALLOW_FACTORIES", "other:thing, tests.helpers:tiny_net")
    assert FrozenClassifier.from_checkpoint(path).num_classes == 10
    monkeypatch.delenv("EXPLAINER_ALLOW_FACTORIES")
    from explainer import trust

    monkeypatch.setitem(trust.BACKBONES._entries, "tests.helpers:tiny_net", tiny_net)
    assert FrozenClassifier.from_checkpoint(path).num_classes == 10
    with pytest.raises(ValueError, match="registered already"):
        register_backbone("tests.helpers:tiny_net", lambda num_classes: tiny_net(num_classes))


def test_a_text_file_as_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("these are my notes\n")
    with pytest.raises(ValueError, match=r"notes.ckpt' is not a readable PyTorch checkpoint .*another format"):
        FrozenClassifier.from_checkpoint(path)


def test_damaged_export_files_are_named(tmp_path, monkeypatch):
    module, folder = _honest_export(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file"):
        explainer.load(folder)
    (folder / "config.json").write_text('{"format": "explainer-export/1", ')
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        explainer.load(folder)


def test_the_marker_detects_an_import(tmp_path, monkeypatch):
    # control: the same hostile checkpoint, explicitly allowed, does import the module and call its factory
    name = f"evil_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "MARKER"
    (tmp_path / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "def factory(num_classes):\n    raise RuntimeError('factory called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _classifier_with_backbone(tmp_path / "c", f"{name}:factory")
    with pytest.raises(RuntimeError, match="factory called"):
        FrozenClassifier.from_checkpoint(path, allow_factories=[f"{name}:factory"])
    assert marker.read_text() == "imported"
    sys.modules.pop(name, None)


def test_train_ckpt_path_with_a_nested_class_spec(evil, tmp_path, repo, tiny_digits_args, in_tmp):
    # jsonargparse would build any {"class_path": ...} found under a dict-typed hyper-parameter
    from explainer.cli import make_cli

    name, _ = evil
    _, path = write_classifier_checkpoint(tmp_path / "c")
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["class_names"] = [{"class_path": f"{name}.Thing", "init_args": {}}]
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"hyper_parameters\.class_names\[0\] holds a 'class_path' entry"):
        make_cli(
            [
                "fit",
                "--config",
                str(repo / "configs/quickstart/classifier.yaml"),
                *tiny_digits_args,
                "--ckpt_path",
                str(path),
            ]
        )


def test_load_from_checkpoint_treats_the_checkpoint_as_data(evil, tmp_path):
    from explainer.modules import ClassifierModule

    name, _ = evil
    path = _classifier_with_backbone(tmp_path / "c", f"{name}:factory")
    with pytest.raises(UntrustedFactoryError, match=f"'{name}:factory'"):
        ClassifierModule.load_from_checkpoint(path, weights_only=True)
    _, honest = write_classifier_checkpoint(tmp_path / "h")
    loaded = ClassifierModule.load_from_checkpoint(
        honest, weights_only=True, allow_factories=["tests.helpers:tiny_net"]
    )
    assert loaded.hparams.num_classes == 10


def test_explainer_checkpoint_whose_classifier_spec_names_a_factory(evil, tmp_path, monkeypatch):
    """The classifier spec recorded in an Explainer checkpoint (``{source: pkg.module:factory, weights}``) is
    data too: rebuilding the module refuses the factory before any import."""
    from explainer.modules import ExplainerModule

    name, _ = evil
    monkeypatch.setenv("EXPLAINER_ALLOW_FACTORIES", "tests.helpers:tiny_net")
    module, _ = _honest_export(tmp_path)
    monkeypatch.delenv("EXPLAINER_ALLOW_FACTORIES")
    torch.save({}, tmp_path / "w.pt")
    path = tmp_path / "explainer.ckpt"
    hp = dict(module.hparams)
    hp["classifier"] = {"source": f"{name}:factory", "weights": str(tmp_path / "w.pt")}
    hp["_class_path"] = "explainer.modules.ExplainerModule"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hp, "pytorch-lightning_version": "2.6.6"}, path)
    with pytest.raises(UntrustedFactoryError, match=rf"'{name}:factory'"):
        ExplainerModule.load_from_checkpoint(path)
