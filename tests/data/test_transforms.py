"""Transforms v2 pipelines: boxes and masks follow the image through every resize, crop, flip and rotation."""

from __future__ import annotations

import pytest
import torch

from explainer.data.transforms import RawSample, SampleTransform

NUM_CLASSES = 3


def patch_sample(width: int, height: int, box: tuple[int, int, int, int], cls: int = 1) -> RawSample:
    """A dark image with one bright box-shaped patch, its box and its mask."""
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 40, (3, height, width), dtype=torch.uint8, generator=g)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 250
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[0, y0:y1, x0:x1] = True
    labels = torch.zeros(NUM_CLASSES)
    labels[cls] = 1
    return RawSample(
        image=image,
        labels=labels,
        boxes=torch.tensor([box], dtype=torch.float32),
        box_labels=torch.tensor([cls]),
        difficult=torch.tensor([True]),
        masks=mask,
        mask_classes=torch.tensor([cls]),
        id="patch",
    )


def centres_inside(box: torch.Tensor, size: int) -> torch.Tensor:
    """Reference: pixels of a size x size image whose centre lies inside the box (naive loop)."""
    out = torch.zeros(size, size, dtype=torch.bool)
    x0, y0, x1, y1 = box.tolist()
    for y in range(size):
        for x in range(size):
            out[y, x] = x0 <= x + 0.5 < x1 and y0 <= y + 0.5 < y1
    return out


def identity_norm(**kwargs) -> SampleTransform:
    return SampleTransform(mean=(0, 0, 0), std=(1, 1, 1), **kwargs)


@pytest.mark.parametrize(("width", "height", "box"), [(60, 40, (10, 8, 30, 24)), (37, 53, (3, 20, 30, 51))])
def test_stretch_scales_boxes_and_masks_exactly(width, height, box):
    raw = patch_sample(width, height, box)
    sample = identity_norm(image_size=24, resize="stretch")(raw)
    sx, sy = 24 / width, 24 / height
    expected = torch.tensor([[box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]])
    torch.testing.assert_close(sample.boxes, expected)
    assert sample.masks.shape == (NUM_CLASSES, 24, 24) and sample.masks.dtype == torch.bool
    assert torch.equal(sample.masks[1], centres_inside(expected[0], 24)), "mask = pixels centred in the box"
    assert not sample.masks[0].any() and not sample.masks[2].any()
    assert sample.orig_size == (height, width) and sample.id == "patch"
    assert sample.difficult.tolist() == [True] and sample.box_labels.tolist() == [1]


def test_shorter_side_and_centre_crop_by_hand():
    # 60x40 -> shorter side 20 -> 30x20 -> centre crop 20x20 starting at x = 5
    raw = patch_sample(60, 40, (10, 8, 30, 24))
    sample = identity_norm(image_size=20, resize="shorter_crop")(raw)
    torch.testing.assert_close(sample.boxes, torch.tensor([[0.0, 4.0, 10.0, 12.0]]))
    assert torch.equal(sample.masks[1], centres_inside(sample.boxes[0], 20))
    assert sample.image.shape == (3, 20, 20)


def test_a_box_cropped_away_is_dropped_but_the_label_stays():
    raw = patch_sample(60, 20, (1, 2, 8, 18))  # inside the left strip that the centre crop removes
    sample = identity_norm(image_size=20, resize="shorter_crop")(raw)
    assert sample.boxes.shape == (0, 4) and sample.box_labels.numel() == 0 and sample.difficult.numel() == 0
    assert sample.labels.tolist() == [0.0, 1.0, 0.0]
    assert not sample.masks.any()


@pytest.mark.parametrize("resize", ["stretch", "shorter_crop"])
def test_bright_patch_stays_under_box_and_mask_through_augmentation(resize):
    raw = patch_sample(64, 48, (14, 10, 44, 34))
    transform = identity_norm(image_size=32, resize=resize, augment=True, rotation=15.0, colour_jitter=0.0)
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        s = transform(raw)
        bright = s.image.mean(0) > 0.6
        mask = s.masks[1]
        # the mask covers the bright patch and nothing else (up to one pixel of interpolation at its rim)
        eroded = -torch.nn.functional.max_pool2d(-mask[None, None].float(), 3, 1, 1)[0, 0] > 0
        dilated = torch.nn.functional.max_pool2d(mask[None, None].float(), 3, 1, 1)[0, 0] > 0
        assert bright[eroded].all(), f"seed {seed}: the patch left the mask"
        assert not bright[~dilated].any(), f"seed {seed}: bright pixels outside the mask"
        # the box holds the centre of every mask pixel (nearest-neighbour sampling of a rotated mask moves
        # its rim by up to half a pixel) and no more than a rotation's slack around it
        x0, y0, x1, y1 = s.boxes[0].tolist()
        ys, xs = torch.nonzero(mask, as_tuple=True)
        cx, cy = xs + 0.5, ys + 0.5
        assert x0 - 0.5 <= cx.min() and cx.max() <= x1 + 0.5 and y0 - 0.5 <= cy.min() and cy.max() <= y1 + 0.5
        assert (x1 - x0) * (y1 - y0) <= 1.8 * mask.sum()
        flips.add(bool(xs.float().mean() > 16))  # the patch lies left of centre, flipped right of it
    assert flips == {False, True}, "the seeds should include flipped and unflipped samples"


def test_flip_mirrors_boxes_exactly():
    raw = patch_sample(40, 40, (2, 5, 12, 30))
    transform = identity_norm(image_size=40, augment=True, hflip=1.0, rotation=0.0, colour_jitter=0.0)
    s = transform(raw)
    torch.testing.assert_close(s.boxes, torch.tensor([[28.0, 5.0, 38.0, 30.0]]))
    assert torch.equal(s.masks[1], centres_inside(s.boxes[0], 40))
    torch.testing.assert_close(s.image, raw.image.flip(-1).float() / 255)


def test_normalisation_uses_the_given_constants_and_jitter_leaves_annotations_alone():
    raw = patch_sample(32, 32, (4, 4, 20, 20))
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.125)
    s = SampleTransform(image_size=32, mean=mean, std=std)(raw)
    expected = (raw.image.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(s.image, expected)
    jitter = identity_norm(image_size=32, augment=True, hflip=0.0, rotation=0.0, colour_jitter=0.4)
    torch.manual_seed(3)
    j = jitter(raw)
    assert not torch.equal(j.image, raw.image.float() / 255)
    torch.testing.assert_close(j.boxes, raw.boxes)
    assert torch.equal(j.masks[1], raw.masks[0])


def test_images_without_boxes_or_mask_channels():
    raw = patch_sample(30, 20, (0, 0, 5, 5))
    raw.boxes, raw.box_labels, raw.difficult = (
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.bool),
    )
    raw.masks, raw.mask_classes = torch.zeros(0, 20, 30, dtype=torch.bool), torch.zeros(0, dtype=torch.long)
    s = identity_norm(image_size=16, augment=True)(raw)
    assert s.boxes.shape == (0, 4) and s.masks.shape == (NUM_CLASSES, 16, 16) and not s.masks.any()
    raw.masks = raw.mask_classes = None
    assert identity_norm(image_size=16)(raw).masks is None


def test_bad_resize_mode_is_refused():
    with pytest.raises(ValueError, match="resize mode"):
        SampleTransform(resize="letterbox")


def keypoint_sample(width: int = 40, height: int = 20) -> RawSample:
    """The patch sample with three keypoints on its box: two corners-ish points and one not visible."""
    raw = patch_sample(width, height, (4, 2, 14, 12))
    raw.keypoints = torch.tensor([[[5.0, 3.0], [13.0, 11.0], [float("nan"), float("nan")]]])
    return raw


def test_keypoints_follow_a_stretch_exactly():
    s = identity_norm(image_size=10)(keypoint_sample())  # x scaled by 1/4, y by 1/2
    torch.testing.assert_close(s.keypoints[0, :2], torch.tensor([[1.25, 1.5], [3.25, 5.5]]))
    assert s.keypoints.shape == (1, 3, 2) and torch.isnan(s.keypoints[0, 2]).all()


def test_keypoints_mirror_like_box_corners_under_a_flip():
    s = identity_norm(image_size=40, resize="stretch", augment=True, hflip=1.0, rotation=0, colour_jitter=0)(
        keypoint_sample(40, 40)
    )
    torch.testing.assert_close(s.keypoints[0, :2], torch.tensor([[35.0, 3.0], [27.0, 11.0]]))
    # the mirrored box holds the mirrored points, as it held the originals
    x0, _, x1, _ = s.boxes[0].tolist()
    assert x0 <= 27.0 and 35.0 <= x1


def test_keypoints_cropped_away_become_not_visible():
    raw = patch_sample(40, 20, (4, 2, 30, 12))
    raw.keypoints = torch.tensor([[[5.0, 3.0], [25.0, 10.0], [float("nan"), float("nan")]]])
    s = identity_norm(image_size=20, resize="shorter_crop")(raw)  # keeps columns 10..30 of the 40
    assert torch.isnan(s.keypoints[0, 0]).all() and torch.isnan(s.keypoints[0, 2]).all()
    torch.testing.assert_close(s.keypoints[0, 1], torch.tensor([15.0, 10.0]))


def test_keypoints_stay_inside_their_rotated_box():
    raw = keypoint_sample(40, 40)
    for seed in range(5):
        torch.manual_seed(seed)
        s = identity_norm(image_size=40, augment=True, hflip=0.5, rotation=20, colour_jitter=0)(raw)
        x0, y0, x1, y1 = s.boxes[0].tolist()
        pts = s.keypoints[0, :2]
        assert ((pts[:, 0] >= x0 - 1e-4) & (pts[:, 0] <= x1 + 1e-4)).all()
        assert ((pts[:, 1] >= y0 - 1e-4) & (pts[:, 1] <= y1 + 1e-4)).all()
        # a rotation keeps the distance between the two points
        assert abs(float((pts[0] - pts[1]).norm()) - float(torch.tensor([8.0, 8.0]).norm())) < 1e-3


def test_keypoints_must_match_the_boxes():
    raw = keypoint_sample()
    raw.keypoints = torch.zeros(2, 3, 2)
    with pytest.raises(ValueError, match="keypoints must be"):
        identity_norm(image_size=10)(raw)


def test_samples_without_keypoints_have_none():
    assert identity_norm(image_size=10)(patch_sample(40, 20, (4, 2, 14, 12))).keypoints is None
