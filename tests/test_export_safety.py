"""Exports replace their folder whole and atomically, refuse non-finite tensors, and never overwrite their source."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import explainer
from explainer.callbacks import ExportExplainer
from explainer.export import export_explainer
from explainer.modules import ExplainerModule
from tests.helpers import write_classifier_checkpoint

MASK_NET = {"mask_net": "unet", "mask_net_kwargs": {"width": 4, "depth": 2}}


@pytest.fixture
def module(tmp_path):
    _, ckpt = write_classifier_checkpoint(tmp_path)
    torch.manual_seed(0)
    return ExplainerModule(str(ckpt), **MASK_NET)


def test_overwrite_replaces_the_folder_whole(module, tmp_path):
    folder = export_explainer(module, tmp_path / "export", example_images=torch.randn(2, 3, 32, 32))
    (folder / "model.ts").write_text("stale")  # a file of an earlier export with torchscript
    with pytest.raises(FileExistsError, match="config.json exists; pass overwrite=True"):
        export_explainer(module, folder)
    export_explainer(module, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export.")]  # no staging folder left
    explainer.load(folder)


def test_non_finite_weights_are_refused_and_the_earlier_export_kept(module, tmp_path):
    folder = export_explainer(module, tmp_path / "export")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with torch.no_grad():
        next(module.mask_net.parameters())[0] = float("inf")
        module.mask_net.apply(lambda m: m.running_var.fill_(float("nan")) if hasattr(m, "running_var") else None)
    with pytest.raises(ValueError, match=r"the mask network has non-finite values in .*training diverged"):
        export_explainer(module, folder, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export.")]


def test_a_failure_midway_leaves_the_earlier_export(module, tmp_path, monkeypatch):
    from explainer import export as export_module

    folder = export_explainer(module, tmp_path / "export")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "save_example_masks", broken)
    with pytest.raises(OSError, match="disk full"):
        export_explainer(module, folder, overwrite=True, example_images=torch.randn(2, 3, 32, 32))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_folder_of_other_files_is_never_replaced(module, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="holds files but no export"):
            export_explainer(module, folder, overwrite=overwrite)
    assert (folder / "thesis.tex").read_text() == "precious"
    export_explainer(module, tmp_path / "empty_dir_is_fine")


def test_the_export_target_cannot_be_the_init_from_source(module, tmp_path):
    source = export_explainer(module, tmp_path / "export")
    callback = ExportExplainer(folder=str(source), overwrite=True)
    tuned = SimpleNamespace(hparams=SimpleNamespace(init_from=str(tmp_path / "." / "export")))
    with pytest.raises(ValueError, match="is the Explainer this run starts from"):
        callback.on_fit_start(None, tuned)
    ExportExplainer(folder=str(tmp_path / "elsewhere")).on_fit_start(None, tuned)


def test_a_diverging_run_stops_and_exports_nothing(repo, in_tmp, tiny_digits_args):
    from explainer.cli import make_cli

    _, ckpt = write_classifier_checkpoint(in_tmp)
    args = [
        "fit",
        "--config",
        str(repo / "configs/quickstart/explainer.yaml"),
        *tiny_digits_args,
        "--model.init_args.classifier",
        str(ckpt),
        "--model.init_args.mask_net",
        "unet",
        "--model.init_args.mask_net_kwargs",
        '{"width": 4, "depth": 2}',
        "--model.init_args.encoder_from_classifier",
        "false",
        "--model.init_args.lr",
        "1e10",
        "--trainer.max_epochs",
        "2",
    ]
    with pytest.raises(FloatingPointError, match=r"non-finite (Explainer network weights or buffers|Explainer loss)"):
        make_cli(args)
    assert not (in_tmp / "checkpoints" / "quickstart" / "explainer").exists()


def test_non_finite_weights_and_buffers_are_named():
    from torch import nn

    from explainer.modules.guards import non_finite_tensors, stop_if_not_finite

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert non_finite_tensors(net) == []
    net[1].running_var[2] = float("inf")
    with torch.no_grad():
        net[0].bias[0] = float("nan")
    assert non_finite_tensors(net) == ["0.bias", "1.running_var"]
    owner = SimpleNamespace(_trainer=None, global_step=7, current_epoch=1)
    with pytest.raises(FloatingPointError, match=r"non-finite weights after step 7 \(epoch 1\): 0.bias, 1.running_var"):
        stop_if_not_finite(owner, net, "weights")


def test_explain_refuses_bad_input_with_the_fix(module, tmp_path):
    model = explainer.load(export_explainer(module, tmp_path / "export"))
    images = torch.randn(3, 3, 32, 32)
    assert model.explain(images).shape == (3, 10, 32, 32)
    assert model.explain(images[0], classes=["3", 4]).shape == (1, 2, 32, 32)
    with pytest.raises(TypeError, match=r"normalised floating-point images, got torch.uint8: convert pixels"):
        model.explain((images * 50).clamp(0, 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\] or \[3, H, W\] images, got shape \(3, 1, 32, 32\)"):
        model.explain(images[:, :1])
    broken = images.clone()
    broken[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] of the batch hold NaN or inf pixels"):
        model.explain(broken)
    with pytest.raises(ValueError, match=r"unknown class 'cat'; this Explainer knows \['0', '1'"):
        model.explain(images, classes=["cat"])
    with pytest.raises(ValueError, match=r"class 10 is neither a class name nor an index in \[0, 9\]"):
        model.explain(images, classes=[10])
    with pytest.raises(ValueError, match=r"class indices must lie in \[-1, 9\]"):
        model.explain(images, classes=torch.full((3, 1), 12))


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_evaluate_limit_must_be_positive(limit, tmp_path, repo, capsys):
    from explainer.evaluation.cli import main

    with pytest.raises(SystemExit):
        main(
            [
                "--data",
                str(repo / "configs/data/digits.yaml"),
                "--classifier",
                "x.ckpt",
                "--methods",
                "centre",
                "--out",
                str(tmp_path / "out"),
                "--limit",
                limit,
            ]
        )
    assert f"--limit must be a positive number of images, got {limit}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_replacing_folder_refuses_the_working_directory_and_keeps_usual_permissions(in_tmp):
    import os
    from pathlib import Path

    from explainer.atomic import replacing_folder, write_atomic

    for target in (".", ".."):
        with pytest.raises(ValueError, match="working directory"):
            with replacing_folder(Path(target)):
                pass
    assert list(in_tmp.iterdir()) == []  # nothing staged, nothing replaced
    with replacing_folder(Path("out")) as staging:
        (staging / "a.txt").write_text("1")
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat("out").st_mode & 0o777 == 0o777 & ~mask
    assert os.stat(write_atomic(Path("f.txt"), "x")).st_mode & 0o777 == 0o666 & ~mask


def test_only_a_genuine_export_is_replaced(module, tmp_path):
    import json

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Bert"]}))  # somebody else's model folder
    with pytest.raises(FileExistsError, match="is not only an Explainer export"):
        export_explainer(module, folder, overwrite=True)
    export = export_explainer(module, tmp_path / "export")
    (export / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"it also holds \['notes.txt'\]"):
        export_explainer(module, export, overwrite=True)
    assert (export / "notes.txt").read_text() == "mine"


def test_a_checkpoint_loads_with_the_normalisation_it_was_trained_with(module, tmp_path):
    import lightning.pytorch as pl

    module.norm_mean.fill_(0.5)
    module.norm_std.fill_(0.25)
    trainer = pl.Trainer(
        max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path)
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "explainer.ckpt", weights_only=False)
    loaded = explainer.load(tmp_path / "explainer.ckpt")
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.25, 0.25, 0.25)
    assert explainer.load(export_explainer(module, tmp_path / "export")).mean == (0.5, 0.5, 0.5)


def test_the_readme_fine_tune_recipe_for_another_architecture(repo, in_tmp, tiny_digits_args):
    # the README's command: explainer.yaml + finetune.yaml, a resnet18 classifier instead of the quickstart one
    import lightning.pytorch as pl

    from explainer.cli import make_cli
    from explainer.modules import ClassifierModule

    _, quickstart = write_classifier_checkpoint(in_tmp / "qs")
    source = ExplainerModule(
        str(quickstart), mask_net="classifier_unet", mask_net_kwargs={"backbone": "digitnet", "width": 32}
    )
    export = export_explainer(source, in_tmp / "checkpoints" / "quickstart" / "explainer")
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    torch.manual_seed(0)
    other = ClassifierModule(backbone="resnet18", num_classes=10, class_names=[str(i) for i in range(10)])
    trainer = pl.Trainer(
        max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(in_tmp)
    )
    trainer.strategy.connect(other)
    trainer.save_checkpoint(in_tmp / "my_classifier.ckpt", weights_only=False)
    make_cli(
        [
            "fit",
            "--config",
            str(repo / "configs/quickstart/explainer.yaml"),
            "--config",
            str(repo / "configs/quickstart/finetune.yaml"),
            "--model.init_args.classifier",
            "my_classifier.ckpt",
            *tiny_digits_args,
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
        ]
    )
    tuned = explainer.load(in_tmp / "checkpoints" / "finetuned" / "explainer")
    assert tuned.explain(torch.randn(2, 3, 32, 32)).shape == (2, 10, 32, 32)
    assert tuned.config["classifier"]["reference"] == "my_classifier.ckpt"
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before  # the source export is untouched


def test_the_fine_tune_recipe_for_another_architecture_and_class_list(repo, in_tmp, caplog):
    # the README recipe on a folder dataset with other classes: "3" and "7" are shared with the quickstart
    # Explainer, the others are new; the classifier is a resnet18 named by architecture + a plain state dict
    import json
    import logging

    import torchvision

    from explainer.cli import make_cli
    from explainer.data import DigitScenes

    renamed = {
        str(d): name for d, name in enumerate(["zero", "one", "two", "3", "four", "five", "six", "7", "eight", "nine"])
    }
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        DigitScenes(split, num_scenes=n, image_size=32, seed=3).save(in_tmp / "data" / split)
        path = in_tmp / "data" / split / "annotations.json"
        ann = json.loads(path.read_text())
        ann["classes"] = [renamed[c] for c in ann["classes"]]
        for image in ann["images"]:
            image["labels"] = [renamed[c] for c in image["labels"]]
            for box in image["boxes"]:
                box["label"] = renamed[box["label"]]
        path.write_text(json.dumps(ann))
    (in_tmp / "data.yaml").write_text(
        "class_path: explainer.data.FolderDataModule\n"
        f"init_args: {{root: {in_tmp / 'data'}, image_size: 32, batch_size: 8, num_workers: 0}}\n"
    )
    _, quickstart = write_classifier_checkpoint(in_tmp / "qs")
    source = ExplainerModule(
        str(quickstart), mask_net="classifier_unet", mask_net_kwargs={"backbone": "digitnet", "width": 32}
    )
    export = export_explainer(source, in_tmp / "checkpoints" / "quickstart" / "explainer")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).eval().state_dict(), in_tmp / "resnet18.pth")
    with caplog.at_level(logging.INFO):
        cli = make_cli(
            [
                "fit",
                "--config",
                str(repo / "configs/quickstart/explainer.yaml"),
                "--config",
                str(repo / "configs/quickstart/finetune.yaml"),
                "--data",
                str(in_tmp / "data.yaml"),
                "--model.init_args.classifier",
                "{source: resnet18, weights: resnet18.pth}",
                "--trainer.max_epochs",
                "1",
                "--trainer.limit_train_batches",
                "2",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.enable_model_summary",
                "false",
            ]
        )
    plan = cli.model.fine_tune_plan
    assert plan["kept"] == {"3": "3", "7": "7"}
    assert plan["initialised"] == [n for n in renamed.values() if n not in ("3", "7")]
    assert (
        "class-head rows kept for 2 class(es) shared by name [3, 7]; initialised for 8 new class(es) [zero, one"
        in caplog.text
    )
    old = explainer.load(export)
    tuned = explainer.load(in_tmp / "checkpoints" / "finetuned" / "explainer")
    assert tuned.class_names == list(renamed.values())
    assert tuned.config["classifier"]["spec"] == {"source": "resnet18", "weights": "resnet18.pth"}
    assert tuned.explain(torch.randn(2, 3, 32, 32)).shape == (2, 10, 32, 32)
    head = [k for k in old.net.state_dict() if k.startswith(old.net.head_prefix)][0]
    assert not torch.equal(tuned.net.state_dict()[head][3], old.net.state_dict()[head][3])  # trained on from it
