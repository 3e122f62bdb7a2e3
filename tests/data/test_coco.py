"""COCO 2014: contiguous classes, unannotated images, crowd regions, class masks, saved subsets, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from explainer.data import COCO_CATEGORIES, COCO_CLASSES, COCO2014DataModule, COCO2014Dataset
from explainer.data.files import CorruptImageError, DatasetNotFoundError
from explainer.data.labels import COCO_ID_TO_INDEX
from tests.data.fake_datasets import coco_images, make_coco2014, snapshot, truncate_file


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    images = make_coco2014(root)
    return root, {s: {img.id: img for img in imgs} for s, imgs in images.items()}


def test_eighty_contiguous_classes_from_category_ids():
    assert len(COCO_CLASSES) == 80 and COCO2014DataModule().num_classes == 80
    assert COCO_ID_TO_INDEX[1] == 0 and COCO_ID_TO_INDEX[90] == 79 and COCO_ID_TO_INDEX[13] == 11
    assert COCO_CLASSES[11] == "stop sign" and COCO_CLASSES[79] == "toothbrush"
    assert sorted(COCO_ID_TO_INDEX.values()) == list(range(80))
    assert not {12, 26, 29, 30, 45, 66, 68, 69, 71, 83} & set(COCO_ID_TO_INDEX)
    assert COCO2014DataModule().category_ids == [cid for cid, _ in COCO_CATEGORIES]


@pytest.mark.parametrize("image_set", ["train2014", "val2014"])
def test_raw_labels_boxes_crowd_flags_and_masks(coco, image_set):
    root, truth = coco
    ds = COCO2014Dataset(root, image_set)
    assert ds.ids == sorted(int(i) for i in truth[image_set])
    for i, image_id in enumerate(ds.ids):
        img, raw = truth[image_set][str(image_id)], ds.load(i)
        assert raw.id == str(image_id) and raw.image.shape == (3, img.height, img.width)
        assert raw.boxes.tolist() == [list(map(float, o.box)) for o in img.objects]
        assert raw.box_labels.tolist() == [o.cls for o in img.objects]
        assert raw.difficult.tolist() == [o.crowd for o in img.objects], "crowd regions are flagged"
        assert set(raw.labels.nonzero().flatten().tolist()) == img.classes()
        # per class: the union of its instance regions (crowd included), by a naive loop
        full = torch.zeros(80, img.height, img.width, dtype=torch.bool)
        full[raw.mask_classes] = raw.masks.bool()
        expected = torch.zeros_like(full)
        for o in img.objects:
            x0, y0, x1, y1 = o.box
            expected[o.cls, y0:y1, x0:x1] = True
        assert torch.equal(full, expected)


def test_unannotated_image_has_no_labels(coco):
    root, _ = coco
    ds = COCO2014Dataset(root, "val2014", image_ids=[133])
    s = ds[0]
    assert s.labels.shape == (80,) and s.labels.sum() == 0
    assert s.boxes.shape == (0, 4) and s.masks.shape == (80, 224, 224) and not s.masks.any()


def test_crowd_can_be_left_out_of_the_labels(coco):
    root, _ = coco
    raw = COCO2014Dataset(root, "val2014", image_ids=[73], crowd_as_labels=False).load(0)
    assert raw.labels.nonzero().flatten().tolist() == [17]  # the crowd of people no longer labels it
    assert raw.difficult.tolist() == [False, True] and 0 in raw.mask_classes.tolist()


def test_splits_subsets_are_seeded_saved_and_read_back(coco, tmp_path):
    root, truth = coco
    splits = tmp_path / "splits"
    kwargs = dict(root=str(root), image_size=16, num_workers=0, splits_dir=str(splits))
    dm = COCO2014DataModule(val_fraction=0.34, val_size=1, test_size=2, **kwargs)
    dm.setup()
    train, val, test = (dm.datasets[s] for s in ("train", "val", "test"))
    all_train = sorted(int(i) for i in truth["train2014"])
    assert val.image_set == "train2014" and test.image_set == "val2014"
    assert len(val) == 1 and len(test) == 2 and len(train) == len(all_train) - 2
    assert not set(train.ids) & set(val.ids) and set(test.ids) <= {73, 74, 133, 136}
    held = json.loads((splits / "coco2014_val-from-train2014_frac0.34_seed0.json").read_text())["image_ids"]
    assert len(held) == 2 and sorted(train.ids + held) == all_train and set(val.ids) <= set(held)
    saved_test = json.loads((splits / "coco2014_test_val2014_n2_seed0.json").read_text())
    assert saved_test["image_ids"] == test.ids and saved_test["seed"] == 0
    # the same seed draws the same lists; a saved list is read back, not drawn again
    again = COCO2014DataModule(val_fraction=0.34, val_size=1, test_size=2, **kwargs)
    again.setup()
    assert again.datasets["test"].ids == test.ids and again.datasets["train"].ids == train.ids
    other = sorted({73, 74, 133, 136} - set(test.ids))
    (splits / "coco2014_test_val2014_n2_seed0.json").write_text(json.dumps({"image_ids": other}))
    third = COCO2014DataModule(val_fraction=0.34, val_size=1, test_size=2, **kwargs)
    third.setup("test")
    assert third.datasets["test"].ids == other
    # without saving, the seed alone decides; some other seed gives another list
    draws = {
        tuple(COCO2014DataModule(root=str(root), test_size=2, subset_seed=s, splits_dir=None).split_ids("test")[1])
        for s in range(6)
    }
    assert len(draws) > 1


def test_validation_on_val2014_when_nothing_is_split_off(coco):
    root, truth = coco
    dm = COCO2014DataModule(str(root), val_fraction=0.0, image_size=16, num_workers=0, splits_dir=None)
    dm.setup("fit")
    assert dm.datasets["val"].image_set == "val2014" and len(dm.datasets["train"]) == len(truth["train2014"])


def test_masks_for_evaluation_splits_only_by_default(coco):
    root, _ = coco
    dm = COCO2014DataModule(str(root), val_fraction=0.0, image_size=16, batch_size=8, num_workers=0, splits_dir=None)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader())).masks is None
    val = next(iter(dm.val_dataloader()))
    assert val.masks.shape == (4, 80, 16, 16) and val.mask_valid.all()
    dm = COCO2014DataModule(
        str(root), val_fraction=0.0, image_size=16, batch_size=8, num_workers=0, splits_dir=None, train_masks=True
    )
    dm.setup("fit")
    assert next(iter(dm.train_dataloader())).masks is not None


def test_masks_and_boxes_stay_on_the_objects(coco):
    root, truth = coco
    dm = COCO2014DataModule(
        str(root),
        val_fraction=0.0,
        image_size=32,
        batch_size=4,
        num_workers=0,
        splits_dir=None,
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    for b, image_id in enumerate(batch.ids):
        img = truth["val2014"][image_id]
        sx, sy = 32 / img.width, 32 / img.height
        expected = torch.tensor([[o.box[0] * sx, o.box[1] * sy, o.box[2] * sx, o.box[3] * sy] for o in img.objects])
        torch.testing.assert_close(batch.boxes[b], expected.reshape(-1, 4))
        union = batch.masks[b].any(0)[None, None].float()
        inner = -torch.nn.functional.max_pool2d(-union, 3, 1, 1)[0, 0] > 0
        outer = torch.nn.functional.max_pool2d(union, 3, 1, 1)[0, 0] > 0
        bright = batch.image[b].mean(0) > 0.6
        assert bright[inner].all() and not bright[~outer].any()


def test_missing_root_is_one_error_at_setup(tmp_path):
    dm = COCO2014DataModule(str(tmp_path / "coco"), val_fraction=0.0)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.setup("test")
    message = str(err.value)
    assert str(tmp_path / "coco") in message and "annotations/instances_val2014.json" in message
    assert "cocodataset.org" in message and "val2014/COCO_val2014_" in message


def test_wrong_categories_are_refused(tmp_path):
    make_coco2014(tmp_path, {"val2014": coco_images()["val2014"]})
    ann = tmp_path / "annotations/instances_val2014.json"
    content = json.loads(ann.read_text())
    content["categories"] = content["categories"][:10]
    ann.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="80 COCO categories"):
        COCO2014Dataset(tmp_path, "val2014")


def test_corrupt_image_is_named_or_skipped_and_counted(tmp_path):
    images = make_coco2014(tmp_path, {"val2014": coco_images()["val2014"]})
    truncate_file(images["val2014"][1].path)  # id 74
    with pytest.raises(CorruptImageError, match="COCO_val2014_000000000074.jpg"):
        COCO2014Dataset(tmp_path, "val2014", image_ids=[74])[0]
    dm = COCO2014DataModule(
        str(tmp_path), val_fraction=0.0, image_size=16, batch_size=2, num_workers=0, splits_dir=None, skip_corrupt=True
    )
    dm.setup("test")
    with pytest.warns(RuntimeWarning, match="1 corrupt image"):
        ids = [i for batch in dm.test_dataloader() for i in batch.ids]
    assert ids == ["73", "133", "136"]


def test_a_full_pass_writes_nothing_in_the_dataset_folder(tmp_path):
    make_coco2014(tmp_path / "coco")
    before = snapshot(tmp_path / "coco")
    dm = COCO2014DataModule(
        str(tmp_path / "coco"),
        val_fraction=0.2,
        test_size=3,
        image_size=16,
        batch_size=4,
        num_workers=0,
        splits_dir=str(tmp_path / "splits"),
        augment=True,
    )
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for _ in loader:
            pass
    assert snapshot(tmp_path / "coco") == before
    assert len(list((tmp_path / "splits").iterdir())) == 2
