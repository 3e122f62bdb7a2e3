"""CUB-200-2011: classes, boxes, part keypoints, splits with a held-out validation share, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from explainer.data import CUB200DataModule
from explainer.data.cub import CUBAnnotations
from explainer.data.files import DatasetNotFoundError
from tests.data.fake_datasets import CUB_PARTS, make_cub200


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    birds = make_cub200(root, num_classes=3, per_class=6)
    return root, {b.image_id: b for b in birds}


def test_classes_and_parts_come_from_the_text_files(cub):
    root, _ = cub
    dm = CUB200DataModule(root, image_size=32)
    assert dm.class_names == ["Fake_Bird_0", "Fake_Bird_1", "Fake_Bird_2"] and dm.num_classes == 3
    assert dm.part_names == list(CUB_PARTS) and dm.num_parts == 15
    # the CUB_200_2011 folder itself works as the root too
    assert CUB200DataModule(root / "CUB_200_2011").class_names == dm.class_names


def test_raw_labels_boxes_and_keypoints(cub):
    root, truth = cub
    dm = CUB200DataModule(root, val_fraction=0.0)
    ds = dm.make_dataset("test")
    assert sorted(ds.ids) == sorted(i for i, b in truth.items() if not b.train)
    for index, image_id in enumerate(ds.ids):
        bird, raw = truth[image_id], ds.load(index)
        assert raw.image.shape == (3, bird.height, bird.width)
        assert raw.labels.tolist() == [float(c == bird.cls) for c in range(3)]
        x, y, w, h = bird.box
        assert raw.boxes.tolist() == [[x, y, x + w, y + h]] and raw.box_labels.tolist() == [bird.cls]
        assert raw.keypoints.shape == (1, 15, 2)
        for part, xy in enumerate(bird.parts):
            if xy is None:
                assert torch.isnan(raw.keypoints[0, part]).all()
            else:
                torch.testing.assert_close(raw.keypoints[0, part], torch.tensor(xy))


def test_keypoints_are_scaled_with_the_image(cub):
    root, truth = cub
    dm = CUB200DataModule(root, image_size=40, val_fraction=0.0, batch_size=4, num_workers=0)
    batch = next(iter(dm.test_dataloader()))
    assert batch.image.shape == (4, 3, 40, 40) and len(batch.keypoints) == 4
    ds = dm.datasets["test"]
    for kp, image_id in zip(batch.keypoints, ds.ids[:4], strict=True):
        bird = truth[image_id]
        for part, xy in enumerate(bird.parts):
            if xy is not None:
                expected = torch.tensor([xy[0] * 40 / bird.width, xy[1] * 40 / bird.height])
                torch.testing.assert_close(kp[0, part], expected, rtol=0, atol=1e-4)


def test_validation_is_a_seeded_share_of_each_class_of_the_training_split(cub):
    root, truth = cub
    dm = CUB200DataModule(root, val_fraction=0.3, seed=1)
    ann = dm.annotations
    train, val = ann.split_ids("train", 0.3, 1), ann.split_ids("val", 0.3, 1)
    official = {i for i, b in truth.items() if b.train}
    assert set(train) | set(val) == official and not set(train) & set(val)
    for c in range(3):
        members = [i for i in official if truth[i].cls == c]
        assert sum(truth[i].cls == c for i in val) == math.ceil(0.3 * len(members))
    assert val == ann.split_ids("val", 0.3, 1), "the hold-out is seeded"
    assert ann.split_ids("val", 0.0) == ann.split_ids("test"), "val_fraction=0 validates on the test split"


def test_missing_root_names_the_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="CUB_200_2011.tgz") as err:
        CUB200DataModule(tmp_path / "nowhere").class_names  # noqa: B018
    assert "part_locs.txt" in str(err.value)


def test_malformed_rows_and_missing_annotations_are_errors(tmp_path):
    make_cub200(tmp_path, num_classes=2, per_class=2)
    folder = tmp_path / "CUB_200_2011"
    boxes = folder / "bounding_boxes.txt"
    lines = boxes.read_text().splitlines()
    boxes.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="bounding_boxes.txt has no row"):
        CUBAnnotations.read(tmp_path)
    boxes.write_text("\n".join(lines[:-1] + ["4 1.0 2.0"]) + "\n")
    with pytest.raises(ValueError, match="expected 5 columns"):
        CUBAnnotations.read(tmp_path)


def test_bad_val_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        CUB200DataModule(val_fraction=1.0)


def test_missing_image_files_are_named(tmp_path):
    birds = make_cub200(tmp_path, num_classes=2, per_class=2)
    (tmp_path / "CUB_200_2011" / "images" / birds[0].path).unlink()
    with pytest.raises(DatasetNotFoundError, match="lacks 1 of the first"):
        CUB200DataModule(tmp_path, val_fraction=0.0).make_dataset("train")
