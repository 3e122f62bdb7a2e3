"""VOC 2007: labels, 1-based boxes, difficult flags, segmentation with void, splits and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from explainer.data import VOC_CLASSES, VOC2007DataModule, VOC2007Dataset
from explainer.data.files import CorruptImageError, DatasetNotFoundError
from explainer.data.transforms import SampleTransform
from tests.data.fake_datasets import make_voc2007, snapshot, truncate_file, voc_label_map


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    images = make_voc2007(root)
    return root, {img.id: img for img in images}


def test_class_list_is_the_standard_order():
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor" and len(VOC_CLASSES) == 20
    assert VOC_CLASSES.index("person") == 14 and VOC_CLASSES.index("diningtable") == 10
    assert VOC2007DataModule().class_names == list(VOC_CLASSES) and VOC2007DataModule().num_classes == 20


@pytest.mark.parametrize("image_set", ["train", "val", "trainval", "test"])
def test_raw_labels_boxes_and_difficult_flags(voc, image_set):
    root, truth = voc
    ds = VOC2007Dataset(root, image_set)
    members = {"trainval": {"train", "val"}}.get(image_set, {image_set})
    assert sorted(ds.ids) == sorted(i for i, img in truth.items() if set(img.splits) & members)
    for i, image_id in enumerate(ds.ids):
        img, raw = truth[image_id], ds.load(i)
        assert raw.image.shape == (3, img.height, img.width) and raw.image.dtype == torch.uint8
        # the XML holds 1-based inclusive corners; the boxes are back at the 0-based exclusive truth
        assert raw.boxes.tolist() == [list(map(float, o.box)) for o in img.objects]
        assert raw.box_labels.tolist() == [o.cls for o in img.objects]
        assert raw.difficult.tolist() == [o.difficult for o in img.objects]
        assert set(raw.labels.nonzero().flatten().tolist()) == img.classes(with_difficult=True)
        assert raw.labels.sum() == len(img.classes()), "duplicate objects count once"


def test_difficult_objects_can_be_left_out_of_the_labels(voc):
    root, truth = voc
    ds = VOC2007Dataset(root, "val", difficult_as_labels=False)
    raw = ds.load(ds.ids.index("000004"))  # one difficult bicycle only
    assert raw.labels.sum() == 0 and raw.difficult.tolist() == [True] and raw.box_labels.tolist() == [1]
    train = VOC2007Dataset(root, "train", difficult_as_labels=False)
    raw = train.load(train.ids.index("000001"))  # dog + difficult person
    assert raw.labels.nonzero().flatten().tolist() == [VOC_CLASSES.index("dog")]


def test_segmentation_masks_ignore_the_void_band(voc):
    root, truth = voc
    ds = VOC2007Dataset(root, "test")
    assert ds.num_with_masks == 2
    for i, image_id in enumerate(ds.ids):
        img, raw = truth[image_id], ds.load(i)
        if not img.segmented:
            assert raw.masks is None
            continue
        label = torch.from_numpy(voc_label_map(img))
        assert (label == 255).any(), "the fake PNG has a void band"
        full = torch.zeros(20, img.height, img.width, dtype=torch.bool)
        full[raw.mask_classes] = raw.masks
        for c in range(20):  # naive reference per class
            assert torch.equal(full[c], label == c + 1)
        assert not full[:, label == 255].any(), "void is foreground of no class"


def test_samples_are_resized_and_masks_stay_on_the_objects(voc):
    root, truth = voc
    dm = VOC2007DataModule(str(root), image_size=32, batch_size=3, num_workers=0, mean=(0, 0, 0), std=(1, 1, 1))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch.image.shape == (3, 3, 32, 32) and batch.labels.shape == (3, 20)
    assert batch.masks.shape == (3, 20, 32, 32) and batch.mask_valid.tolist() == [True, True, False]
    assert batch.ids == ["000005", "000006", "000007"]
    assert batch.orig_size.tolist() == [[48, 64], [56, 40], [40, 52]]
    for b, image_id in enumerate(batch.ids):
        img = truth[image_id]
        sx, sy = 32 / img.width, 32 / img.height
        expected = torch.tensor([[o.box[0] * sx, o.box[1] * sy, o.box[2] * sx, o.box[3] * sy] for o in img.objects])
        torch.testing.assert_close(batch.boxes[b], expected)
        bright = batch.image[b].mean(0) > 0.6
        if batch.mask_valid[b]:
            union = batch.masks[b].any(0)[None, None].float()
            inner = -torch.nn.functional.max_pool2d(-union, 3, 1, 1)[0, 0] > 0
            outer = torch.nn.functional.max_pool2d(union, 3, 1, 1)[0, 0] > 0
            assert bright[inner].all() and not bright[~outer].any()  # the rim pixel may be blended
        else:
            assert not batch.masks[b].any()


def test_missing_root_is_one_error_at_setup_naming_path_layout_and_source(tmp_path):
    dm = VOC2007DataModule(str(tmp_path / "nowhere"))  # constructing needs no data
    with pytest.raises(DatasetNotFoundError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "VOCdevkit/VOC2007/JPEGImages" in message
    assert "host.robots.ox.ac.uk" in message and "download=True" in message


def test_incomplete_root_names_the_missing_files(tmp_path):
    images = make_voc2007(tmp_path)
    images[0].path.unlink()
    (tmp_path / "VOCdevkit/VOC2007/ImageSets/Main/test.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="000001.jpg"):
        VOC2007Dataset(tmp_path, "train")
    with pytest.raises(DatasetNotFoundError, match=r"ImageSets/Main/test.txt"):
        VOC2007Dataset(tmp_path / "VOCdevkit", "test")  # VOCdevkit itself is accepted as the root


def test_corrupt_image_is_named_or_skipped_and_counted(tmp_path):
    images = make_voc2007(tmp_path)
    truncate_file(images[4].path)  # 000005, a test image
    with pytest.raises(CorruptImageError, match="000005.jpg"):
        VOC2007Dataset(tmp_path, "test").load(0)
    dm = VOC2007DataModule(str(tmp_path), image_size=16, batch_size=2, num_workers=0, skip_corrupt=True)
    dm.setup("test")
    with pytest.warns(RuntimeWarning, match="1 corrupt image"):
        ids = [i for batch in dm.test_dataloader() for i in batch.ids]
    assert ids == ["000006", "000007"]


def test_download_is_passed_to_torchvision_only_when_lists_are_missing(tmp_path, monkeypatch):
    calls = []

    class Recorder:
        def __init__(self, root, year, image_set, download):
            calls.append((root, year, image_set, download))

    monkeypatch.setattr("explainer.data.voc.VOCDetection", Recorder)
    VOC2007DataModule(str(tmp_path), download=True).prepare_data()
    assert calls == [(str(tmp_path), "2007", "trainval", True), (str(tmp_path), "2007", "test", True)]
    calls.clear()
    make_voc2007(tmp_path)
    VOC2007DataModule(str(tmp_path), download=True).prepare_data()
    VOC2007DataModule(str(tmp_path / "fresh")).prepare_data()  # download=False never fetches
    assert calls == []


def test_a_full_pass_writes_nothing_in_the_dataset_folder(tmp_path):
    make_voc2007(tmp_path)
    before = snapshot(tmp_path)
    dm = VOC2007DataModule(
        str(tmp_path), train_split="trainval", image_size=16, batch_size=4, num_workers=0, augment=True
    )
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for _ in loader:
            pass
    assert snapshot(tmp_path) == before


def test_bad_xml_class_is_named(tmp_path):
    make_voc2007(tmp_path)
    xml = tmp_path / "VOCdevkit/VOC2007/Annotations/000003.xml"
    xml.write_text(xml.read_text().replace("<name>car</name>", "<name>spaceship</name>"))
    ds = VOC2007Dataset(tmp_path, "val", transform=SampleTransform(16))
    with pytest.raises(ValueError, match=r"spaceship.*000003.xml"):
        ds[ds.ids.index("000003")]


def test_segmentation_values_outside_the_classes_are_refused(tmp_path):
    from PIL import Image

    make_voc2007(tmp_path)
    png = tmp_path / "VOCdevkit/VOC2007/SegmentationClass/000006.png"
    label = np.array(Image.open(png))
    label[0, 0] = 77
    Image.fromarray(label, mode="L").save(png)
    ds = VOC2007Dataset(tmp_path, "test")
    with pytest.raises(ValueError, match=r"000006.png holds values \[77\]"):
        ds.load(ds.ids.index("000006"))


def test_workers_share_the_skip_count(tmp_path):
    images = make_voc2007(tmp_path)
    for img in images[:3]:
        truncate_file(img.path)  # 000001 / 000002 (train) and 000003 (val)
    dm = VOC2007DataModule(
        str(tmp_path), train_split="trainval", image_size=16, batch_size=1, num_workers=2, skip_corrupt=True
    )
    dm.setup("fit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = sorted(i for batch in dm.train_dataloader() for i in batch.ids)
    assert ids == ["000004"]
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("3 corrupt image(s)" in m for m in messages), messages
