"""Class lists of the public datasets and small label helpers.

Every dataset difference that downstream code could care about lives here or in the data modules:
the 20 PASCAL VOC classes in their standard order (the order of the segmentation indices 1..20) and
the 80 MS-COCO categories with their raw ids (1..90 with gaps), mapped to contiguous indices 0..79.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""The 20 VOC classes; class ``i`` has value ``i + 1`` in VOC segmentation PNGs (0 background, 255 void)."""

VOC_VOID = 255
"""The value of the void band around objects in VOC segmentation PNGs (ignored: never foreground)."""

COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"),
    (2, "bicycle"),
    (3, "car"),
    (4, "motorcycle"),
    (5, "airplane"),
    (6, "bus"),
    (7, "train"),
    (8, "truck"),
    (9, "boat"),
    (10, "traffic light"),
    (11, "fire hydrant"),
    (13, "stop sign"),
    (14, "parking meter"),
    (15, "bench"),
    (16, "bird"),
    (17, "cat"),
    (18, "dog"),
    (19, "horse"),
    (20, "sheep"),
    (21, "cow"),
    (22, "elephant"),
    (23, "bear"),
    (24, "zebra"),
    (25, "giraffe"),
    (27, "backpack"),
    (28, "umbrella"),
    (31, "handbag"),
    (32, "tie"),
    (33, "suitcase"),
    (34, "frisbee"),
    (35, "skis"),
    (36, "snowboard"),
    (37, "sports ball"),
    (38, "kite"),
    (39, "baseball bat"),
    (40, "baseball glove"),
    (41, "skateboard"),
    (42, "surfboard"),
    (43, "tennis racket"),
    (44, "bottle"),
    (46, "wine glass"),
    (47, "cup"),
    (48, "fork"),
    (49, "knife"),
    (50, "spoon"),
    (51, "bowl"),
    (52, "banana"),
    (53, "apple"),
    (54, "sandwich"),
    (55, "orange"),
    (56, "broccoli"),
    (57, "carrot"),
    (58, "hot dog"),
    (59, "pizza"),
    (60, "donut"),
    (61, "cake"),
    (62, "chair"),
    (63, "couch"),
    (64, "potted plant"),
    (65, "bed"),
    (67, "dining table"),
    (70, "toilet"),
    (72, "tv"),
    (73, "laptop"),
    (74, "mouse"),
    (75, "remote"),
    (76, "keyboard"),
    (77, "cell phone"),
    (78, "microwave"),
    (79, "oven"),
    (80, "toaster"),
    (81, "sink"),
    (82, "refrigerator"),
    (84, "book"),
    (85, "clock"),
    (86, "vase"),
    (87, "scissors"),
    (88, "teddy bear"),
    (89, "hair drier"),
    (90, "toothbrush"),
)
"""The 80 COCO categories as ``(category_id, name)``, sorted by id; index in this tuple = class index."""

COCO_CLASSES: tuple[str, ...] = tuple(name for _, name in COCO_CATEGORIES)
"""The 80 COCO class names in contiguous-index order."""

COCO_ID_TO_INDEX: dict[int, int] = {cat_id: i for i, (cat_id, _) in enumerate(COCO_CATEGORIES)}
"""Raw COCO category id -> contiguous class index 0..79."""


def multi_hot(indices: Iterable[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """A float multi-hot vector; repeated indices count once.

    Args:
        indices: class indices (any order, duplicates allowed).
        num_classes: the vector's length.

    Returns:
        ``[num_classes]`` float tensor with 1 at every given index.
    """
    index = torch.as_tensor(list(indices) if not isinstance(indices, torch.Tensor) else indices, dtype=torch.long)
    labels = torch.zeros(num_classes)
    if index.numel():
        if int(index.min()) < 0 or int(index.max()) >= num_classes:
            raise ValueError(f"class indices {index.tolist()} out of range for {num_classes} classes")
        labels[index] = 1.0
    return labels


def class_lookup(names: Sequence[str]) -> dict[str, int]:
    """Maps class names to their index, refusing duplicates.

    Args:
        names: the class names in index order.

    Returns:
        ``{name: index}``.
    """
    lookup = {name: i for i, name in enumerate(names)}
    if len(lookup) != len(names):
        dupes = sorted({n for n in names if list(names).count(n) > 1})
        raise ValueError(f"duplicate class names: {dupes}")
    return lookup


__all__ = [
    "COCO_CATEGORIES",
    "COCO_CLASSES",
    "COCO_ID_TO_INDEX",
    "VOC_CLASSES",
    "VOC_VOID",
    "class_lookup",
    "multi_hot",
]
