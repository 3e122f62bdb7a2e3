"""The learned in-filler: network, training module, panel, export and loading, and its use by FIDO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from explainer.cli import make_cli
from explainer.export_infiller import FORMAT, export_infiller, load_infiller
from explainer.methods import build_infill, build_method
from explainer.methods.infill import BlurInfill, Infill
from explainer.methods.learned_infill import LearnedInfill
from explainer.modules.infiller import InfillerModule, hole_l1, training_masks
from explainer.nets.infiller import InfillerNet, build_infiller_net
from explainer.ops import random_grid_masks
from tests.helpers import tiny_net

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def _masks(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return training_masks(n, (size, size), 0.5, (0.2, 0.8), (2, 4), (2, 8), torch.Generator().manual_seed(seed))


def _export(tmp_path: Path, size: int = 16, seed: int = 0, name: str = "infiller") -> tuple[InfillerNet, Path]:
    torch.manual_seed(seed)
    net = InfillerNet(width=4, depth=1)
    folder = export_infiller(net, tmp_path / name, (size, size), MEAN, STD)
    return net, folder


@pytest.mark.parametrize("size", [16, 20])
def test_the_net_fills_only_the_dropped_pixels(size):
    torch.manual_seed(0)
    net = InfillerNet(width=4, depth=2)
    images = torch.randn(3, 3, size, size)
    keep = _masks(3, size)
    out = net(images, keep)
    assert out.shape == images.shape
    kept = keep.expand_as(images).bool()
    assert torch.equal(out[kept], images[kept])  # kept pixels pass through bit for bit
    dropped = ~kept
    assert not torch.allclose(out[dropped], images[dropped])
    # the prediction does not see the dropped pixels: changing them changes nothing
    other = torch.where(kept, images, torch.randn_like(images))
    torch.testing.assert_close(net(other, keep), out)


def test_the_net_refuses_wrong_shapes_and_specs():
    net = InfillerNet(width=4, depth=1)
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        net(torch.zeros(2, 3, 16, 16), torch.ones(2, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown in-filler network 'unet'"):
        build_infiller_net({"name": "unet", "kwargs": {}})
    with pytest.raises(ValueError, match="arguments .*'layers'"):
        build_infiller_net({"name": "infiller_unet", "kwargs": {"layers": 3}})
    assert build_infiller_net(net.spec()).spec() == net.spec()


def test_grid_and_blob_masks_drop_the_requested_share():
    masks = random_grid_masks(400, (32, 32), drop=(0.3, 0.3), cells=(4, 8), generator=torch.Generator().manual_seed(0))
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert abs(1 - masks.mean().item() - 0.3) < 0.03
    mixed = training_masks(200, (32, 32), 0.5, (0.5, 0.5), (2, 4), (2, 8), torch.Generator().manual_seed(1))
    assert abs(1 - mixed.mean().item() - 0.5) < 0.05
    with pytest.raises(ValueError, match="drop must be a range"):
        random_grid_masks(1, (8, 8), drop=(0.8, 0.2))


def test_hole_l1_counts_the_dropped_region_only():
    images = torch.zeros(1, 3, 4, 4)
    completed = torch.ones(1, 3, 4, 4)
    keep = torch.ones(1, 1, 4, 4)
    keep[..., :2, :] = 0  # half dropped
    completed[..., :2, :] = 0.5
    assert hole_l1(completed, images, keep).item() == pytest.approx(0.5)
    assert hole_l1(completed, images, torch.ones_like(keep)).item() == 0.0


def test_training_steps_reduce_the_loss_on_a_learnable_fill():
    """Images of one smooth colour per image: the fill is learnable from the kept pixels, and a few Adam steps
    on the module's own loss reduce it."""
    torch.manual_seed(0)
    module = InfillerModule(width=8, depth=1, lr=1e-2, scheduler="none")
    colours = torch.randn(16, 3, 1, 1)
    images = colours.expand(16, 3, 16, 16).contiguous()
    keep = module.masks_for(images, torch.Generator().manual_seed(0))
    optimiser = module.configure_optimizers()
    losses = []
    for _ in range(30):
        loss = hole_l1(module(images, keep), images, keep)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


def test_fit_records_the_data_and_exports_through_train_py(repo, in_tmp, tiny_digits_args):
    cli = make_cli(
        [
            "fit",
            "--config",
            str(repo / "configs/quickstart/infiller.yaml"),
            *tiny_digits_args,
            "--trainer.max_epochs",
            "1",
            "--model.init_args.width",
            "4",
            "--model.init_args.depth",
            "1",
        ]
    )
    module = cli.model
    dm = cli.datamodule
    assert list(module.hparams.data_image_size) == [32, 32]
    assert list(module.hparams.data_mean) == list(dm.mean) and list(module.hparams.data_std) == list(dm.std)
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    folder = in_tmp / "checkpoints/quickstart/infiller"
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == FORMAT and config["image_size"] == [32, 32]
    assert config["normalization"] == {"mean": list(dm.mean), "std": list(dm.std)}
    assert (folder / "examples.png").stat().st_size > 0
    panels = list(in_tmp.glob("runs/infiller/*/images/val-infills-epoch000.png"))
    assert panels, sorted(str(p) for p in in_tmp.rglob("*.png"))
    # the checkpoint reloads with its recorded data, without arguments
    ckpt = next(in_tmp.glob("runs/infiller/*/checkpoints/*.ckpt"))
    again = InfillerModule.load_from_checkpoint(ckpt)
    assert list(again.hparams.data_image_size) == [32, 32]
    # the export is the best checkpoint's network
    loaded = load_infiller(folder)
    images = next(iter(dm.val_dataloader())).image[:4]
    keep = _masks(4, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, keep), again.eval()(images, keep))


def test_given_data_facts_must_match_the_data_module(repo, in_tmp, tiny_digits_args):
    with pytest.raises(ValueError, match=r"data_image_size is \[64, 64\] but the data module's is \[32, 32\]"):
        make_cli(
            [
                "fit",
                "--config",
                str(repo / "configs/quickstart/infiller.yaml"),
                *tiny_digits_args,
                "--trainer.fast_dev_run",
                "1",
                "--model.init_args.data_image_size",
                "[64, 64]",
            ]
        )


def test_export_load_round_trip_gives_identical_fills(tmp_path):
    net, folder = _export(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_infiller(folder)
    assert loaded.image_size == (16, 16) and loaded.mean == MEAN and loaded.std == STD
    images, keep = torch.randn(4, 3, 16, 16), _masks(4, 16)
    infill = build_infill(f"learned={folder}")
    assert isinstance(infill, LearnedInfill)
    with torch.no_grad():
        expected = net.eval()(images, keep)
    assert torch.equal(loaded(images, keep), expected)
    fill = infill(images, keep)
    assert torch.equal(fill, expected)
    assert not fill.requires_grad
    # the fill takes no gradient even when the images carry one
    assert not infill(images.clone().requires_grad_(True), keep).requires_grad


def test_export_refuses_to_replace_without_overwrite(tmp_path):
    net, folder = _export(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_infiller(net, folder, (16, 16), MEAN, STD)
    export_infiller(net, folder, (16, 16), MEAN, STD, overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="choose an empty or new folder"):
        export_infiller(net, tmp_path / "other", (16, 16), MEAN, STD, overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_build_infill_keeps_names_and_instances_and_refuses_empty_paths(tmp_path):
    assert isinstance(build_infill("blur"), BlurInfill)
    blur = BlurInfill(3.0)
    assert build_infill(blur) is blur
    with pytest.raises(ValueError, match="needs an in-filler export folder"):
        build_infill("learned=")
    with pytest.raises(FileNotFoundError, match="not an in-filler export folder"):
        build_infill(f"learned={tmp_path / 'nowhere'}")


def test_fido_runs_with_the_learned_infill(tmp_path):
    _, folder = _export(tmp_path)
    torch.manual_seed(0)
    classifier = tiny_net(3).eval()
    images = torch.randn(2, 3, 16, 16)
    classes = torch.tensor([[0, 2], [1, -1]])
    method = build_method("fido", classifier, infill=f"learned={folder}", iterations=4, samples=2, seed=1)
    assert isinstance(method.infill, LearnedInfill)
    maps = method.attribute(images, classes)
    assert maps.shape == (2, 2, 16, 16)
    assert torch.isfinite(maps).all() and (maps[1, 1] == 0).all()
    assert maps[0, 0].std() > 0
    # the in-filler's weights took no gradient and did not move
    assert all(p.grad is None for p in method.infill.parameters())
    torch.testing.assert_close(method.attribute(images, classes), maps)  # seeded: the same maps again


def test_size_and_normalisation_mismatches_are_refused_naming_both(tmp_path):
    _, folder = _export(tmp_path, size=16)
    infill = build_infill(f"learned={folder}")
    Infill().check_data(99, (0.0,) * 3, (1.0,) * 3)  # the heuristic in-fillers fill any data
    infill.check_data(16, MEAN, STD)
    infill.check_data((16, 16), None, None)
    with pytest.raises(ValueError, match=r"image size \[16, 16\], but the data has image size \[32, 32\]"):
        infill.check_data(32, MEAN, STD)
    with pytest.raises(ValueError, match=r"mean \[0.5, 0.4, 0.3\], but the data .* mean \[0.485, 0.456, 0.406\]"):
        infill.check_data(16, (0.485, 0.456, 0.406), STD)
    with pytest.raises(ValueError, match=r"std \[0.2, 0.25, 0.3\], but the data .* std \[1.0, 1.0, 1.0\]"):
        infill.check_data(16, MEAN, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"image size \[16, 16\], but it was given images of size \[32, 32\]"):
        infill(torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 32, 32))
    fido = build_method("fido", tiny_net(3).eval(), infill=infill, iterations=2, samples=1)
    with pytest.raises(ValueError, match=r"size \[32, 32\]"):
        fido.attribute(torch.zeros(1, 3, 32, 32), torch.tensor([[0]]))


def test_a_damaged_or_missing_export_is_refused_with_the_fix(tmp_path):
    _, folder = _export(tmp_path)
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file.*export it again"):
        load_infiller(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_infiller(folder)
    weights.write_bytes(original)
    # weights of another network than the config records
    config = json.loads((folder / "config.json").read_text())
    config["net"]["kwargs"]["width"] = 8
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit the network recorded"):
        load_infiller(folder)
    for broken, match in [
        ("{not json", "not valid JSON"),
        (json.dumps({**config, "format": "explainer-export/1"}), "has format 'explainer-export/1'"),
        (json.dumps({**config, "image_size": [16]}), "image_size must be"),
        (json.dumps({**config, "normalization": {"mean": [0, 0, 0], "std": [1, 0, 1]}}), "std must be positive"),
    ]:
        (folder / "config.json").write_text(broken)
        with pytest.raises(ValueError, match=match):
            load_infiller(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_infill(f"learned={folder}")


def test_non_finite_weights_are_refused(tmp_path):
    net = InfillerNet(width=4, depth=1)
    with torch.no_grad():
        net.head[0].bias[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        export_infiller(net, tmp_path / "bad", (16, 16), MEAN, STD)
    assert not (tmp_path / "bad").exists()


def test_evaluate_refuses_fido_with_an_infiller_for_other_data_before_scoring(repo, tmp_path):
    from explainer.evaluation.cli import main as evaluate
    from tests.helpers import write_classifier_checkpoint

    _, classifier = write_classifier_checkpoint(tmp_path)
    _, small = _export(tmp_path, size=16, name="small")
    _, other_norm = _export(tmp_path, size=32, name="other_norm")
    common = [
        "--data", str(repo / "configs/data/digits.yaml"), "--data-arg", "image_size=32", "--data-arg", "test_scenes=4",
        "--classifier", str(classifier), "--methods", "fido", "--option", "fido.iterations=1",
        "--metrics", "saliency", "--limit", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"image size \[16, 16\], but the data has image size \[32, 32\]"):
        evaluate([*common, "--option", f"fido.infill=learned={small}", "--out", str(tmp_path / "a")])
    with pytest.raises(ValueError, match=r"mean \[0.5, 0.4, 0.3\], but the data are normalised with mean \[0.485"):
        evaluate([*common, "--option", f"fido.infill=learned={other_norm}", "--out", str(tmp_path / "b")])
    assert not (tmp_path / "a" / "results.json").exists() and not (tmp_path / "b" / "results.json").exists()
