"""Custom folders: DigitScenes.save() JSON, CSV with separators and a split column, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from explainer.data import DigitScenes, FolderDataModule
from explainer.data.files import CorruptImageError, DatasetNotFoundError
from tests.data.fake_datasets import snapshot, truncate_file


def write_image(path, width=24, height=16, value=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    scenes = {
        s: DigitScenes(s, num_scenes=n, image_size=32, seed=5) for s, n in (("train", 6), ("val", 3), ("test", 3))
    }
    for split, ds in scenes.items():
        ds.save(root / split)
    return root, scenes


def test_reads_what_digit_scenes_save(digits_folder):
    root, scenes = digits_folder
    dm = FolderDataModule(str(root), image_size=32, batch_size=4, num_workers=0)  # ImageNet mean/std, as the scenes
    assert dm.class_names == [str(d) for d in range(10)]
    dm.setup()
    for split, ds in scenes.items():
        folder = dm.datasets[split]
        assert len(folder) == len(ds)
        for i in range(len(ds)):
            want, got = ds[i], folder[i]
            assert got.id == want.id
            assert torch.equal(got.labels, want.labels) and torch.equal(got.masks, want.masks)
            assert torch.equal(got.boxes, want.boxes) and torch.equal(got.box_labels, want.box_labels)
            assert not got.difficult.any() and got.orig_size == (32, 32)
            # PNG is lossless and a same-size resize is the identity: the pixels are the scene's
            torch.testing.assert_close(got.image, want.image)
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape == (4, 3, 32, 32) and batch.masks.shape == (4, 10, 32, 32)


def test_csv_with_split_column_and_both_separators(tmp_path):
    for name in ("a", "b", "c", "d"):
        write_image(tmp_path / "photos" / f"{name}.png")
    (tmp_path / "labels.csv").write_text(
        "image,labels,split\n"
        "photos/a.png,cat;dog,train\n"
        "photos/b.png, bird | cat ,train\n"
        "photos/c.png,,val\n"
        "photos/d.png,dog;dog,test\n"
    )
    dm = FolderDataModule(str(tmp_path), annotations="labels.csv", image_size=8, batch_size=2, num_workers=0)
    assert dm.class_names == ["bird", "cat", "dog"]  # sorted, from the file
    dm.setup()
    labels = {
        s: [dm.datasets[s][i].labels.tolist() for i in range(len(dm.datasets[s]))] for s in ("train", "val", "test")
    }
    assert labels == {"train": [[0, 1, 1], [1, 1, 0]], "val": [[0, 0, 0]], "test": [[0, 0, 1]]}
    sample = dm.datasets["train"][0]
    assert sample.id == "a" and sample.boxes.shape == (0, 4) and sample.masks is None
    pinned = FolderDataModule(
        str(tmp_path), annotations="labels.csv", classes=["dog", "cat", "bird", "fish"], image_size=8, num_workers=0
    )
    pinned.setup("test")
    assert pinned.datasets["test"][0].labels.tolist() == [1, 0, 0, 0]


def test_csv_missing_image_or_unknown_class_names_the_row(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "train.csv").write_text("image,labels\na.png,cat\nmissing.png,dog\n")
    dm = FolderDataModule(str(tmp_path), train_file="train.csv", val_file=None, test_file=None, num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"train.csv row 3: image file .*missing.png"):
        dm.setup("fit")
    (tmp_path / "train.csv").write_text("image,labels\na.png,cat|dgo\n")
    dm = FolderDataModule(
        str(tmp_path), train_file="train.csv", val_file=None, test_file=None, classes=["cat", "dog"], num_workers=0
    )
    with pytest.raises(ValueError, match=r"train.csv row 2: unknown class 'dgo'"):
        dm.setup("fit")


def test_json_with_a_split_field_boxes_and_masks(tmp_path):
    write_image(tmp_path / "img/x.png", 20, 10, value=200)
    write_image(tmp_path / "img/y.png", 20, 10)
    label = np.zeros((10, 20), dtype=np.uint8)
    label[2:6, 4:12] = 2  # class 1 ("b")
    label[0, :] = 255  # void
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.fromarray(label).save(tmp_path / "img/x_mask.png")
    (tmp_path / "all.json").write_text(
        json.dumps(
            {
                "classes": ["a", "b"],
                "images": [
                    {
                        "image": "img/x.png",
                        "mask": "img/x_mask.png",
                        "split": "train",
                        "boxes": [
                            {"label": "b", "box": [4, 2, 12, 6]},
                            {"label": "a", "box": [0, 0, 2, 2], "difficult": True},
                        ],
                    },
                    {"image": "img/y.png", "labels": ["a"], "split": "val", "id": "why"},
                ],
            }
        )
    )
    dm = FolderDataModule(str(tmp_path), annotations="all.json", image_size=10, num_workers=0)
    dm.setup("fit")
    x = dm.datasets["train"][0]
    assert x.labels.tolist() == [1, 1]  # from the boxes when no labels are given
    torch.testing.assert_close(x.boxes, torch.tensor([[2.0, 2.0, 6.0, 6.0], [0.0, 0.0, 1.0, 2.0]]))
    assert x.difficult.tolist() == [False, True] and x.box_labels.tolist() == [1, 0]
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[2:6, 2:6] = True
    assert torch.equal(x.masks[1], expected) and not x.masks[0].any()
    y = dm.datasets["val"][0]
    assert y.id == "why" and y.masks is None


def test_single_file_records_need_a_split(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "all.json").write_text(json.dumps({"images": [{"image": "a.png", "labels": ["x"]}]}))
    dm = FolderDataModule(str(tmp_path), annotations="all.json", num_workers=0)
    with pytest.raises(ValueError, match=r"all.json images\[0\]: 'split' must be one of"):
        dm.setup("fit")


def test_missing_root_is_one_error_at_setup(tmp_path):
    dm = FolderDataModule(str(tmp_path / "mine"), classes=["a", "b"])  # no data needed to construct
    with pytest.raises(DatasetNotFoundError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(tmp_path / "mine") in message and "train/annotations.json" in message and "DigitScenes" in message


def test_corrupt_image_is_named_or_skipped(digits_folder, tmp_path):
    root, _ = digits_folder
    for split in ("train", "val"):
        DigitScenes(split, num_scenes=3, image_size=32, seed=5).save(tmp_path / split)
    truncate_file(tmp_path / "val/images/val-000001.png")
    dm = FolderDataModule(str(tmp_path), test_file=None, image_size=16, num_workers=0, batch_size=2)
    dm.setup("fit")
    with pytest.raises(CorruptImageError, match="val-000001.png"):
        dm.datasets["val"][1]
    dm = FolderDataModule(str(tmp_path), test_file=None, image_size=16, num_workers=0, batch_size=2, skip_corrupt=True)
    dm.setup("fit")
    with pytest.warns(RuntimeWarning, match="1 corrupt image"):
        ids = [i for batch in dm.val_dataloader() for i in batch.ids]
    assert ids == ["val-000000", "val-000002"]


def test_a_full_pass_writes_nothing_in_the_dataset_folder(digits_folder):
    root, _ = digits_folder
    before = snapshot(root)
    dm = FolderDataModule(str(root), image_size=16, batch_size=4, num_workers=0, augment=True)
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for _ in loader:
            pass
    assert snapshot(root) == before
