"""The four published presets (classifier and Explainer) run end to end on fake VOC and COCO trees."""

from __future__ import annotations

import pytest
import yaml

from explainer.cli import make_cli
from tests.data.fake_datasets import make_coco2014, make_voc2007
from tests.helpers import write_classifier_checkpoint

PRESETS = {"vgg16_voc": 20, "resnet50_voc": 20, "vgg16_coco": 80, "resnet50_coco": 80}
FAST = [
    "--data.init_args.image_size",
    "32",
    "--data.init_args.batch_size",
    "2",
    "--data.init_args.num_workers",
    "0",
    "--trainer.fast_dev_run",
    "true",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def test_presets_carry_the_published_coefficients(repo):
    table = {  # lr, l_e, l_tv, l_ac, l_m, l_n, patience (REFERENCE section 1)
        "vgg16_voc": (1e-5, 1.0, 1.0, 1.0, 0.1, 0.3, 5),
        "resnet50_voc": (1e-4, 3.0, 1.0, 0.8, 0.01, 0.3, 5),
        "vgg16_coco": (1e-5, 1.0, 0.3, 0.3, 0.03, 0.1, 2),
        "resnet50_coco": (1e-5, 3.0, 0.05, 0.1, 0.01, 0.03, 2),
    }
    for name, expected in table.items():
        config = yaml.safe_load((repo / f"configs/experiment/{name}.yaml").read_text())
        a = config["model"]["init_args"]
        patience = config["trainer"]["callbacks"][0]["init_args"]["patience"]
        assert (
            a["lr"],
            a["entropy"],
            a["tv"],
            a["class_area"],
            a["target_area"],
            a["nontarget_area"],
            patience,
        ) == expected
        assert config["data"]["init_args"]["batch_size"] == 16 and config["data"]["init_args"]["resize"] == "stretch"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_fast_dev_run(repo, in_tmp, preset):
    root = in_tmp / "tree"
    (make_voc2007 if preset.endswith("voc") else make_coco2014)(root)
    cli = make_cli(
        [
            "fit",
            "--config",
            str(repo / f"configs/experiment/{preset}_classifier.yaml"),
            "--data.init_args.root",
            str(root),
            "--model.init_args.weights",
            "null",
            "--model.init_args.backbone",
            "tests.helpers:tiny_net",
            *FAST,
        ]
    )
    assert cli.trainer.state.finished and cli.model.hparams.num_classes == PRESETS[preset]
    _, classifier = write_classifier_checkpoint(
        in_tmp, num_classes=PRESETS[preset], class_names=list(cli.model.hparams.class_names)
    )
    cli = make_cli(
        [
            "fit",
            "--config",
            str(repo / f"configs/experiment/{preset}.yaml"),
            "--data.init_args.root",
            str(root),
            "--model.init_args.classifier",
            str(classifier),
            "--model.init_args.mask_net_kwargs",
            "{weights_backbone: null}",
            *FAST,
        ]
    )
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert type(cli.model.mask_net.model).__name__ == "DeepLabV3"
    assert (in_tmp / f"checkpoints/{preset}/explainer/config.json").is_file()
