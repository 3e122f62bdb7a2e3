"""PrototypeModule: exact logits on digitnet and ResNet-18, bad input, and fitting through the CLI."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from explainer.classifiers import ClassifierNet, FrozenClassifier
from explainer.cli import make_cli, run_dir
from explainer.export_prototypes import load_prototype_classifier, load_prototypes
from explainer.methods import build_method
from explainer.modules import ClassifierModule
from explainer.modules.prototypes import PrototypeModule


def mlp_head_net(num_classes: int) -> ClassifierNet:
    """A classifier whose head is two layers over pooled features (not decomposable)."""
    return ClassifierNet(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, num_classes)),
        name="mlp-head",
    )


def signed_features_net(num_classes: int) -> ClassifierNet:
    """A classifier without a ReLU before the pooling: its features take both signs."""
    return ClassifierNet(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)), nn.Linear(8, num_classes), name="signed")


def classifier_checkpoint(tmp_path, backbone: str, num_classes: int, image_size: int = 32, name: str = "clf.ckpt"):
    module = ClassifierModule(backbone=backbone, num_classes=num_classes)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        module.net.train()(torch.randn(8, 3, image_size, image_size) * 2 + 0.5)
    trainer = pl.Trainer(
        max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    trainer.strategy.connect(module)
    path = tmp_path / name
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize(("backbone", "size"), [("digitnet", 32), ("digitnet_local", 32), ("resnet18", 64)])
def test_prototype_logits_equal_the_classifiers(tmp_path, backbone, size):
    torch.manual_seed(0)
    path = classifier_checkpoint(tmp_path, backbone, 4, size)
    module = PrototypeModule(
        str(path), num_classes=4, prototypes_per_class=3, max_locations_per_class=400, gallery_images_per_class=0
    )
    frozen = FrozenClassifier.from_checkpoint(path, num_classes=4)
    for _ in range(2):
        module.collect(torch.randn(8, 3, size, size), (torch.rand(8, 4) > 0.5).float())
    summary = module.fit_prototypes()
    assert summary["prototypes_per_class"] == [3, 3, 3, 3]
    assert all(a < e for a, e in zip(summary["alignment_loss"], summary["equal_split_alignment_loss"], strict=True))
    weight = frozen.net.head.weight
    assert (module.layer.prototypes.sum(1) - weight).abs().max() < 1e-5
    images = torch.randn(6, 3, size, size)
    with torch.no_grad():
        logits, maps, contributions = module(images)
        expected = frozen(images)
    assert (logits - expected).abs().max() < 1e-4
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    # completeness: the mean of the summed prototype maps plus the bias is the logit
    torch.testing.assert_close(maps.sum(2).mean((-2, -1)) + module.layer.bias, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(contributions.sum(-1) + module.layer.bias, logits)
    assert not torch.allclose(maps[:, :, 0], maps[:, :, 1])  # the prototypes are not the equal split


def test_heads_that_are_not_linear_over_pooled_features_are_refused(tmp_path):
    path = classifier_checkpoint(tmp_path, "tests.modules.test_prototypes:mlp_head_net", 3)
    with pytest.raises(ValueError, match="several or non-linear layers"):
        PrototypeModule(str(path), num_classes=3)


def test_negative_features_are_refused_with_the_reason(tmp_path):
    path = classifier_checkpoint(tmp_path, "tests.modules.test_prototypes:signed_features_net", 3)
    module = PrototypeModule(str(path), num_classes=3, gallery_images_per_class=0)
    with pytest.raises(ValueError, match="non-negative features"):
        module.collect(torch.randn(2, 3, 16, 16), torch.ones(2, 3))


def test_rare_and_absent_classes_get_fewer_prototypes_without_nan(tmp_path):
    path = classifier_checkpoint(tmp_path, "digitnet", 3, image_size=8)
    module = PrototypeModule(str(path), num_classes=3, prototypes_per_class=4, gallery_images_per_class=0)
    labels = torch.tensor([[1.0, 0, 0]] * 6 + [[1.0, 1.0, 0]] * 2)  # class 1: 2 locations, class 2: none
    module.collect(torch.randn(8, 3, 8, 8), labels)  # 8 px: one feature location per image
    with pytest.warns(UserWarning) as record:
        module.fit_prototypes()
    messages = " ".join(str(w.message) for w in record)
    assert "class '1'" in messages and "class '2'" in messages
    counts = module.num_prototypes.tolist()
    assert counts[0] == 4 and 1 <= counts[1] <= 2 and counts[2] == 1
    protos = module.layer.prototypes
    assert torch.isfinite(protos).all() and protos[1, counts[1] :].abs().sum() == 0
    weight = FrozenClassifier.from_checkpoint(path).net.head.weight
    assert (protos.sum(1) - weight).abs().max() < 1e-5
    images = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(module(images)[0], module.classifier(images), atol=1e-4, rtol=0)


def test_fast_dev_run_through_the_cli(in_tmp, repo, tiny_digits_args):
    path = classifier_checkpoint(in_tmp, "tests.helpers:tiny_net", 10)
    cli = make_cli(
        [
            "fit",
            "--config",
            str(repo / "configs/quickstart/prototypes.yaml"),
            *tiny_digits_args,
            "--model.init_args.classifier",
            str(path),
            "--model.init_args.export_dir",
            "export",
            "--trainer.fast_dev_run",
            "true",
        ]
    )
    counts = cli.model.fit_summary["prototypes_per_class"]  # one batch: absent classes keep 1
    assert max(counts) == 5 and min(counts) >= 1
    assert cli.trainer.callback_metrics["val/logit_max_abs_diff"] < 1e-4
    assert (in_tmp / "export" / "model.safetensors").is_file()


def test_fit_exports_draws_the_gallery_and_checkpoints_without_the_classifier(in_tmp, repo, tiny_digits_args):
    path = classifier_checkpoint(in_tmp, "tests.helpers:tiny_net", 10)
    args = [
        "fit",
        "--config",
        str(repo / "configs/quickstart/prototypes.yaml"),
        *tiny_digits_args,
        "--model.init_args.classifier",
        str(path),
        "--model.init_args.export_dir",
        "export",
        "--model.init_args.prototypes_per_class",
        "3",
        "--model.init_args.gallery_images_per_class",
        "4",
        "--model.init_args.gallery_patches",
        "3",
    ]
    cli = make_cli(args)
    metrics = cli.trainer.callback_metrics
    assert metrics["val/logit_max_abs_diff"] < 1e-4 and metrics["val/argmax_agreement"] == 1.0
    assert 0 <= metrics["val/consistency"] <= 1 and 0 <= metrics["val/stability"] <= 1
    gallery = sorted((run_dir(cli.trainer) / "images").glob("prototypes-gallery_class_*.png"))
    assert len(gallery) == 10
    # the export rebuilds the same layer and records the classifier by reference and hash
    layer, config = load_prototypes(in_tmp / "export")
    torch.testing.assert_close(layer.prototypes, cli.model.layer.prototypes.cpu())
    assert config["classifier"]["content_hash"] == FrozenClassifier.from_checkpoint(path).content_hash
    assert config["prototypes_per_class"] == 3 and config["class_names"] == [str(d) for d in range(10)]
    assert json.loads((in_tmp / "export" / "config.json").read_text())["version"]
    frozen, _, _ = load_prototype_classifier(in_tmp / "export")
    method = build_method("prototypes", classifier=frozen, prototypes=in_tmp / "export")
    assert method(torch.randn(2, 3, 32, 32), torch.tensor([[0, 3], [1, -1]])).shape == (2, 2, 32, 32)
    # the Lightning checkpoint holds the prototypes but not the classifier's weights
    best = cli.trainer.checkpoint_callback.best_model_path
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert not any(k.startswith("classifier.") for k in ckpt["state_dict"])
    restored = PrototypeModule.load_from_checkpoint(best, weights_only=True)
    torch.testing.assert_close(restored.layer.prototypes, cli.model.layer.prototypes.cpu())
    # a second fit into the same export folder is refused before any work
    with pytest.raises(FileExistsError, match="already holds a prototype export"):
        make_cli(args)
    # and the test stage reports the same checks
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert results["test/logit_max_abs_diff"] < 1e-4 and "test/stability" in results


def test_a_changed_classifier_is_detected(in_tmp):
    path = classifier_checkpoint(in_tmp, "tests.helpers:tiny_net", 2)
    module = PrototypeModule(
        str(path), num_classes=2, prototypes_per_class=2, gallery_images_per_class=0, export_dir=str(in_tmp / "export")
    )
    module.collect(torch.randn(4, 3, 16, 16), torch.ones(4, 2))
    module.fit_prototypes()
    classifier_checkpoint(in_tmp, "tests.helpers:tiny_net", 2)  # new random weights at the same path
    with pytest.raises(ValueError, match="not the one the prototypes"):
        load_prototype_classifier(in_tmp / "export")
    with pytest.raises(ValueError, match="not the one these prototypes were fitted to"):
        build_method("prototypes", classifier=FrozenClassifier.from_checkpoint(path), prototypes=in_tmp / "export")


def test_fit_on_cub_reports_consistency_with_15_parts(in_tmp, repo):
    from tests.data.fake_datasets import make_cub200

    make_cub200(in_tmp / "cub", num_classes=3, per_class=6)
    path = classifier_checkpoint(in_tmp, "tests.helpers:tiny_net", 3)
    cli = make_cli(
        [
            "fit",
            "--config",
            str(repo / "configs/data/cub.yaml"),
            "--config",
            str(repo / "configs/model/prototypes.yaml"),
            "--data.init_args.root",
            str(in_tmp / "cub"),
            "--data.init_args.image_size",
            "32",
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.val_fraction",
            "0.3",
            "--model.init_args.classifier",
            str(path),
            "--model.init_args.num_parts",
            "15",
            "--model.init_args.prototypes_per_class",
            "2",
            "--model.init_args.gallery_images_per_class",
            "0",
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    assert cli.model.hparams.class_names == ["Fake_Bird_0", "Fake_Bird_1", "Fake_Bird_2"]
    metrics = cli.trainer.callback_metrics
    assert metrics["val/logit_max_abs_diff"] < 1e-4 and metrics["val/argmax_agreement"] == 1.0
    assert 0 <= metrics["val/consistency"] <= 1 and 0 <= metrics["val/stability"] <= 1
    # the default of 3 parts (digit scenes) is refused with the way out
    with pytest.raises(ValueError, match="set num_parts"):
        make_cli(
            [
                "validate",
                "--config",
                str(repo / "configs/data/cub.yaml"),
                "--config",
                str(repo / "configs/model/prototypes.yaml"),
                "--data.init_args.root",
                str(in_tmp / "cub"),
                "--data.init_args.image_size",
                "32",
                "--data.init_args.num_workers",
                "0",
                "--model.init_args.classifier",
                str(path),
                "--trainer.enable_progress_bar",
                "false",
            ]
        )


def test_prototype_heads_take_an_architecture_and_its_state_dict(tmp_path):
    """The classifier named as digitnet + a state-dict file gives the heads of its checkpoint."""
    torch.manual_seed(0)
    path = classifier_checkpoint(tmp_path, "digitnet", 4)
    torch.save(FrozenClassifier.from_checkpoint(path, num_classes=4).net.state_dict(), tmp_path / "digitnet.pt")
    images, labels = torch.randn(8, 3, 32, 32), (torch.rand(8, 4) > 0.5).float()
    heads = []
    for classifier in (str(path), {"source": "digitnet", "weights": str(tmp_path / "digitnet.pt")}):
        module = PrototypeModule(
            classifier, num_classes=4, prototypes_per_class=2, max_locations_per_class=400, gallery_images_per_class=0
        )
        module.collect(images, labels)
        module.fit_prototypes()
        heads.append(module.layer.prototypes.detach())
    torch.testing.assert_close(heads[0], heads[1])
