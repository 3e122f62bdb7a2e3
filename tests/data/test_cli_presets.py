"""The data configs drive the classifier through the CLI on fake VOC, COCO and folder trees."""

from __future__ import annotations

import pytest

from explainer.cli import make_cli
from explainer.data import COCO2014DataModule, DigitScenes, FolderDataModule, VOC2007DataModule
from tests.data.fake_datasets import make_coco2014, make_voc2007

TINY = [
    "--model.init_args.backbone",
    "tests.helpers:tiny_net",
    "--data.init_args.image_size",
    "32",
    "--data.init_args.batch_size",
    "2",
    "--data.init_args.num_workers",
    "0",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def run(repo, subcommand, data_config, root, *extra):
    return make_cli(
        [
            subcommand,
            "--config",
            str(repo / "configs/data" / data_config),
            "--config",
            str(repo / "configs/model/classifier.yaml"),
            "--data.init_args.root",
            str(root),
            "--trainer.fast_dev_run",
            "true",
            *TINY,
            *extra,
        ]
    )


def test_voc2007_config_fits_and_tests(repo, in_tmp):
    make_voc2007(in_tmp / "voc")
    cli = run(repo, "fit", "voc2007.yaml", in_tmp / "voc")
    assert isinstance(cli.datamodule, VOC2007DataModule)
    assert cli.model.hparams.num_classes == 20 and cli.model.hparams.class_names[0] == "aeroplane"
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    cli = run(repo, "test", "voc2007.yaml", in_tmp / "voc", "--data.init_args.batch_size", "3")
    assert "test/mAP" in cli.trainer.callback_metrics


def test_coco2014_config_fits(repo, in_tmp):
    make_coco2014(in_tmp / "coco")
    cli = run(repo, "fit", "coco2014.yaml", in_tmp / "coco")
    assert isinstance(cli.datamodule, COCO2014DataModule)
    assert cli.model.hparams.num_classes == 80 and cli.model.hparams.class_names[79] == "toothbrush"
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert (in_tmp / "data/splits/coco2014_val-from-train2014_frac0.05_seed0.json").is_file()


def test_folder_config_fits_on_saved_digit_scenes(repo, in_tmp):
    for split in ("train", "val", "test"):
        DigitScenes(split, num_scenes=4, image_size=32).save(in_tmp / "digits" / split)
    cli = run(repo, "fit", "folder.yaml", in_tmp / "digits")
    assert isinstance(cli.datamodule, FolderDataModule) and cli.model.hparams.num_classes == 10
    assert cli.trainer.state.finished


@pytest.mark.parametrize("config", ["voc2007.yaml", "coco2014.yaml"])
def test_configs_parse_without_data(repo, in_tmp, config):
    cli = make_cli(
        [
            "--config",
            str(repo / "configs/data" / config),
            "--config",
            str(repo / "configs/model/classifier.yaml"),
            "--model.init_args.backbone",
            "tests.helpers:tiny_net",
        ],
        run=False,
    )
    assert cli.datamodule.batch_size == 16 and cli.datamodule.hparams.image_size == 224
