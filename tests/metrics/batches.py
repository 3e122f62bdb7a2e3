"""Small hand-built batches for the metric tests."""

from __future__ import annotations

import torch
from torch import Tensor

from explainer.data.batch import Batch


def make_batch(
    size: tuple[int, int],
    num_classes: int,
    boxes: list[list[tuple[int, float, float, float, float]]] | None = None,
    difficult: list[list[bool]] | None = None,
    masks: Tensor | None = None,
    mask_valid: Tensor | None = None,
    labels: Tensor | None = None,
    orig_size: list[tuple[int, int]] | None = None,
    batch_size: int | None = None,
) -> Batch:
    """A batch with given boxes ``(class, x0, y0, x1, y1)`` per image, masks, labels and original sizes.

    Labels default to the classes that have a box (or a non-empty mask).
    """
    n = batch_size or (len(boxes) if boxes is not None else masks.shape[0])
    height, width = size
    image = torch.randn(n, 3, height, width)
    box_t = label_t = diff_t = None
    if boxes is not None:
        box_t = [torch.tensor([b[1:] for b in img], dtype=torch.float32).reshape(-1, 4) for img in boxes]
        label_t = [torch.tensor([b[0] for b in img], dtype=torch.long) for img in boxes]
        if difficult is None:
            difficult = [[False] * len(img) for img in boxes]
        diff_t = [torch.tensor(d, dtype=torch.bool) for d in difficult]
    if labels is None:
        labels = torch.zeros(n, num_classes)
        if label_t is not None:
            for i, lab in enumerate(label_t):
                labels[i, lab] = 1.0
        if masks is not None:
            labels = torch.maximum(labels, masks.flatten(2).any(-1).float())
    if masks is not None and mask_valid is None:
        mask_valid = torch.ones(n, dtype=torch.bool)
    return Batch(
        image=image,
        labels=labels,
        masks=masks,
        mask_valid=mask_valid,
        boxes=box_t,
        box_labels=label_t,
        difficult=diff_t,
        ids=[str(i) for i in range(n)],
        orig_size=torch.tensor(orig_size, dtype=torch.long) if orig_size is not None else None,
    )


def random_box_batch(
    generator: torch.Generator, n: int, size: tuple[int, int], num_classes: int, orig_sizes: list[tuple[int, int]]
) -> Batch:
    """Random boxes (1-4 per image, random classes, some difficult) with fractional coordinates."""
    height, width = size
    boxes, difficult = [], []
    for _ in range(n):
        count = int(torch.randint(1, 5, (1,), generator=generator))
        img, diff = [], []
        for _ in range(count):
            cls = int(torch.randint(0, num_classes, (1,), generator=generator))
            x = sorted((torch.rand(2, generator=generator) * width).tolist())
            y = sorted((torch.rand(2, generator=generator) * height).tolist())
            img.append((cls, x[0], y[0], x[1] + 0.5, y[1] + 0.5))
            diff.append(bool(torch.rand(1, generator=generator) < 0.3))
        boxes.append(img)
        difficult.append(diff)
    return make_batch(size, num_classes, boxes=boxes, difficult=difficult, orig_size=orig_sizes)


def naive_box_mask(batch: Batch, b: int, cls: int, size: tuple[int, int], exclude_difficult: bool = False) -> Tensor:
    """Union of one class's boxes at ``size``, one box and one pixel centre test at a time."""
    height, width = batch.image.shape[-2:]
    out_h, out_w = size
    mask = torch.zeros(out_h, out_w, dtype=torch.bool)
    for box, label, diff in zip(batch.boxes[b], batch.box_labels[b], batch.difficult[b], strict=True):
        if int(label) != cls or (exclude_difficult and bool(diff)):
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = x0 * out_w / width, x1 * out_w / width
        y0, y1 = y0 * out_h / height, y1 * out_h / height
        for i in range(out_h):
            if not (y0 <= i + 0.5 < y1):
                continue
            for j in range(out_w):
                if x0 <= j + 0.5 < x1:
                    mask[i, j] = True
    return mask
