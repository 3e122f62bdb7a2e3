"""Tiny PASCAL VOC 2007 and MS-COCO 2014 trees for tests (and, scaled up, for benchmarks).

Every object is drawn as a bright box-shaped patch on a dark, noisy background, so tests can check that
boxes and masks stay on the object through every transform. The builders return what they wrote
(:class:`FakeImage` records), so tests compare the data modules' output with the truth.

* :func:`make_voc2007` writes ``VOCdevkit/VOC2007`` with JPEGs, XML annotations (1-based boxes, a
  difficult object), ``ImageSets/Main`` lists and palette segmentation PNGs with a 255 void band.
* :func:`make_coco2014` writes ``train2014/``, ``val2014/`` and ``annotations/instances_*.json`` with all 80
  categories, polygon instances, a crowd annotation (uncompressed RLE) and an image without annotations.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from explainer.data.labels import COCO_CATEGORIES, VOC_CLASSES


@dataclass
class FakeObject:
    """An object: class index, 0-based box ``(x0, y0, x1, y1)`` with exclusive ends, and its flags."""

    cls: int
    box: tuple[int, int, int, int]
    difficult: bool = False
    crowd: bool = False


@dataclass
class FakeImage:
    """One written image and its truth."""

    id: str
    width: int
    height: int
    objects: list[FakeObject] = field(default_factory=list)
    splits: tuple[str, ...] = ()
    segmented: bool = False
    path: Path | None = None

    def classes(self, with_difficult: bool = True) -> set[int]:
        return {o.cls for o in self.objects if with_difficult or not (o.difficult or o.crowd)}


def _draw(img: FakeImage, rng: np.random.Generator) -> np.ndarray:
    """Dark noise with a bright patch per object (later objects on top)."""
    pixels = rng.integers(0, 50, size=(img.height, img.width, 3), dtype=np.uint8)
    for obj in img.objects:
        x0, y0, x1, y1 = obj.box
        colour = np.array([200 + (obj.cls * 7) % 56, 255 - (obj.cls * 11) % 56, 210], dtype=np.uint8)
        pixels[y0:y1, x0:x1] = colour
    return pixels


_PHOTOS: list[np.ndarray] = []


def _draw_photo(img: FakeImage, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a bundled photograph (scikit-image, scikit-learn) with a bright patch per object.

    The photographs' detail makes JPEG files of photograph-like size (about 45 kB at 500x375, quality 90; VOC
    2007's own average about 85 kB), unlike flat noise or flat colour.
    """
    if not _PHOTOS:
        import skimage.data
        from sklearn.datasets import load_sample_images

        names = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")
        _PHOTOS.extend(getattr(skimage.data, name)()[..., :3] for name in names)
        _PHOTOS.extend(load_sample_images().images)
    photo = Image.fromarray(_PHOTOS[int(rng.integers(len(_PHOTOS)))])
    scale = max(img.width / photo.width, img.height / photo.height) * float(rng.uniform(1.0, 1.5))
    photo = photo.resize((max(img.width, round(photo.width * scale)), max(img.height, round(photo.height * scale))))
    x, y = int(rng.integers(0, photo.width - img.width + 1)), int(rng.integers(0, photo.height - img.height + 1))
    pixels = np.array(photo.crop((x, y, x + img.width, y + img.height)))
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1].copy()
    for obj in img.objects:
        x0, y0, x1, y1 = obj.box
        colour = np.array([200 + (obj.cls * 7) % 56, 255 - (obj.cls * 11) % 56, 210], dtype=np.float32)
        pixels[y0:y1, x0:x1] = (0.5 * pixels[y0:y1, x0:x1] + 0.5 * colour).astype(np.uint8)
    return pixels


def _save_jpeg(pixels: np.ndarray, path: Path, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=quality)


# -- VOC ------------------------------------------------------------------------------------------------
def voc_images() -> list[FakeImage]:
    """The hand-written VOC images (classes by name for readability)."""
    c = {name: i for i, name in enumerate(VOC_CLASSES)}
    return [
        FakeImage(
            "000001",
            64,
            48,
            [FakeObject(c["dog"], (4, 6, 30, 40)), FakeObject(c["person"], (40, 10, 60, 44), difficult=True)],
            ("train",),
        ),
        FakeImage(
            "000002", 56, 40, [FakeObject(c["cat"], (2, 2, 20, 20)), FakeObject(c["cat"], (30, 15, 50, 36))], ("train",)
        ),
        FakeImage("000003", 48, 48, [FakeObject(c["car"], (10, 10, 40, 30))], ("val",)),
        FakeImage("000004", 60, 44, [FakeObject(c["bicycle"], (5, 5, 25, 25), difficult=True)], ("val",)),
        FakeImage(
            "000005",
            64,
            48,
            [FakeObject(c["dog"], (6, 8, 28, 40)), FakeObject(c["person"], (36, 4, 58, 30))],
            ("test",),
            segmented=True,
        ),
        FakeImage("000006", 40, 56, [FakeObject(c["aeroplane"], (8, 12, 32, 44))], ("test",), segmented=True),
        FakeImage(
            "000007",
            52,
            40,
            [FakeObject(c["horse"], (4, 4, 24, 30)), FakeObject(c["horse"], (28, 10, 48, 36), difficult=True)],
            ("test",),
        ),
    ]


def random_images(
    count: int,
    width: int,
    height: int,
    num_classes: int,
    seed: int,
    prefix: str = "",
    splits: tuple[str, ...] = ("train",),
    segmented_every: int = 0,
) -> list[FakeImage]:
    """``count`` images of realistic content density (1-4 objects) for benchmarks."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        objects = []
        for _ in range(int(rng.integers(1, 5))):
            w, h = int(rng.integers(width // 8, width // 2)), int(rng.integers(height // 8, height // 2))
            x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            objects.append(
                FakeObject(int(rng.integers(num_classes)), (x0, y0, x0 + w, y0 + h), difficult=bool(rng.random() < 0.1))
            )
        segmented = segmented_every > 0 and i % segmented_every == 0
        out.append(FakeImage(f"{prefix}{i:06d}", width, height, objects, splits, segmented))
    return out


def _voc_xml(img: FakeImage) -> str:
    objs = "".join(
        f"<object><name>{VOC_CLASSES[o.cls]}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(o.difficult)}</difficult><bndbox><xmin>{o.box[0] + 1}</xmin><ymin>{o.box[1] + 1}</ymin>"
        f"<xmax>{o.box[2]}</xmax><ymax>{o.box[3]}</ymax></bndbox></object>"
        for o in img.objects
    )
    return (
        f"<annotation><folder>VOC2007</folder><filename>{img.id}.jpg</filename>"
        f"<source><database>The VOC2007 Database</database></source>"
        f"<size><width>{img.width}</width><height>{img.height}</height><depth>3</depth></size>"
        f"<segmented>{int(img.segmented)}</segmented>{objs}</annotation>"
    )


def voc_label_map(img: FakeImage) -> np.ndarray:
    """The segmentation truth: class + 1 inside each object's box, a 1-px 255 void ring around it."""
    label = np.zeros((img.height, img.width), dtype=np.uint8)
    for obj in img.objects:
        x0, y0, x1, y1 = obj.box
        label[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = 255
    for obj in img.objects:
        x0, y0, x1, y1 = obj.box
        label[y0:y1, x0:x1] = obj.cls + 1
    return label


def make_voc2007(
    root: str | Path,
    images: list[FakeImage] | None = None,
    seed: int = 0,
    quality: int = 95,
    photographs: bool = False,
) -> list[FakeImage]:
    """Writes a VOC 2007 tree under ``root/VOCdevkit/VOC2007``.

    Args:
        root: the folder to hold ``VOCdevkit``.
        images: the images to write (default: :func:`voc_images`).
        seed: seed of the background noise (or of the photograph crops).
        quality: the JPEG quality.
        photographs: draw the objects on crops of bundled photographs instead of dark noise (benchmarks).

    Returns:
        The images written (with ``path`` set).
    """
    images = voc_images() if images is None else images
    voc = Path(root) / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)]
    for img in images:
        img.path = voc / "JPEGImages" / f"{img.id}.jpg"
        _save_jpeg((_draw_photo if photographs else _draw)(img, rng), img.path, quality)
        (voc / "Annotations" / f"{img.id}.xml").write_text(_voc_xml(img))
        if img.segmented:
            seg = Image.fromarray(voc_label_map(img), mode="L").convert("P")
            seg.putpalette(palette)
            seg.save(voc / "SegmentationClass" / f"{img.id}.png")
    sets = {"train": ["train"], "val": ["val"], "trainval": ["train", "val"], "test": ["test"]}
    for name, members in sets.items():
        ids = [img.id for img in images if set(img.splits) & set(members)]
        (voc / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        seg_ids = [img.id for img in images if img.segmented and set(img.splits) & set(members)]
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in seg_ids))
    return images


# -- COCO -----------------------------------------------------------------------------------------------
def coco_images() -> dict[str, list[FakeImage]]:
    """The hand-written COCO images per image set (ids are COCO image ids)."""
    return {
        "train2014": [
            FakeImage("9", 64, 48, [FakeObject(0, (4, 4, 30, 40)), FakeObject(2, (34, 8, 60, 30))]),
            FakeImage("25", 56, 56, [FakeObject(16, (10, 10, 40, 44))]),
            FakeImage("30", 48, 40, [FakeObject(79, (2, 2, 20, 30)), FakeObject(79, (24, 6, 44, 36))]),
            FakeImage("34", 60, 44, [FakeObject(45, (8, 4, 40, 38))]),
            FakeImage("36", 52, 48, []),
            FakeImage("42", 64, 40, [FakeObject(0, (6, 6, 26, 36)), FakeObject(17, (30, 4, 58, 34))]),
        ],
        "val2014": [
            FakeImage("73", 64, 48, [FakeObject(17, (6, 8, 30, 42)), FakeObject(0, (36, 4, 60, 40), crowd=True)]),
            FakeImage("74", 56, 48, [FakeObject(1, (4, 10, 30, 40)), FakeObject(56, (34, 6, 50, 30))]),
            FakeImage("133", 48, 56, []),  # no annotations: all-zero labels
            FakeImage("136", 60, 40, [FakeObject(16, (10, 6, 44, 34)), FakeObject(0, (20, 10, 30, 30))]),
        ],
    }


def _rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] == 1 else runs


def make_coco2014(
    root: str | Path, images: dict[str, list[FakeImage]] | None = None, seed: int = 0
) -> dict[str, list[FakeImage]]:
    """Writes a COCO 2014 tree under ``root``.

    Objects become polygon annotations (the box's rectangle); crowd objects become uncompressed RLE
    annotations with ``iscrowd=1`` (a box-shaped region).

    Args:
        root: the COCO folder to write (``annotations/``, ``train2014/``, ``val2014/``).
        images: images per image set (default: :func:`coco_images`).
        seed: seed of the background noise.

    Returns:
        The images written (with ``path`` set).
    """
    images = coco_images() if images is None else images
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ann_id = 1
    for image_set, imgs in images.items():
        entries, anns = [], []
        for img in imgs:
            name = f"COCO_{image_set}_{int(img.id):012d}.jpg"
            img.path = root / image_set / name
            _save_jpeg(_draw(img, rng), img.path)
            entries.append(
                {
                    "id": int(img.id),
                    "file_name": name,
                    "width": img.width,
                    "height": img.height,
                    "license": 1,
                    "date_captured": "2013-11-14 11:18:45",
                }
            )
            for obj in img.objects:
                x0, y0, x1, y1 = obj.box
                if obj.crowd:
                    region = np.zeros((img.height, img.width), dtype=np.uint8)
                    region[y0:y1, x0:x1] = 1
                    segmentation = {"counts": _rle_counts(region), "size": [img.height, img.width]}
                else:
                    segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": int(img.id),
                        "category_id": COCO_CATEGORIES[obj.cls][0],
                        "segmentation": segmentation,
                        "area": float((x1 - x0) * (y1 - y0)),
                        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                        "iscrowd": int(obj.crowd),
                    }
                )
                ann_id += 1
        content = {
            "info": {"description": "fake COCO 2014", "year": 2014},
            "licenses": [{"id": 1, "name": "x"}],
            "images": entries,
            "annotations": anns,
            "categories": [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in COCO_CATEGORIES],
        }
        (root / "annotations" / f"instances_{image_set}.json").write_text(json.dumps(content))
    return images


# -- helpers for bad-input tests ---------------------------------------------------------------------------
def truncate_file(path: str | Path, keep: float = 0.5) -> None:
    """Cuts a file to a fraction of its bytes (a truncated download)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


def snapshot(root: str | Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (ns), to detect writes."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in files + dirs:
            st = os.stat(os.path.join(folder, name))
            out[os.path.relpath(os.path.join(folder, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


CUB_PARTS = (
    "back",
    "beak",
    "belly",
    "breast",
    "crown",
    "forehead",
    "left eye",
    "left leg",
    "left wing",
    "nape",
    "right eye",
    "right leg",
    "right wing",
    "tail",
    "throat",
)


@dataclass
class FakeBird:
    """One written CUB image: id, class index, split, box ``(x, y, w, h)`` and 15 keypoints (None: not visible)."""

    image_id: int
    cls: int
    train: bool
    width: int
    height: int
    box: tuple[float, float, float, float]
    parts: list[tuple[float, float] | None]
    path: str = ""


def make_cub200(root: str | Path, num_classes: int = 3, per_class: int = 4, seed: int = 0) -> list[FakeBird]:
    """Writes a tiny ``CUB_200_2011`` tree: ``num_classes`` classes of ``per_class`` images (half train), one
    box-shaped "bird" per image with 15 keypoints on it, some not visible (written as ``0 0 0``)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "CUB_200_2011"
    (folder / "parts").mkdir(parents=True, exist_ok=True)
    birds: list[FakeBird] = []
    image_id = 0
    for c in range(num_classes):
        class_dir = f"{c + 1:03d}.Fake_Bird_{c}"
        (folder / "images" / class_dir).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            image_id += 1
            width, height = int(rng.integers(60, 90)), int(rng.integers(50, 80))
            x, y = float(rng.integers(2, 15)), float(rng.integers(2, 12))
            w, h = float(rng.integers(20, width - x - 1)), float(rng.integers(20, height - y - 1))
            parts = [
                None
                if rng.random() < 0.3
                else (float(round(x + rng.uniform(0, w), 1)), float(round(y + rng.uniform(0, h), 1)))
                for _ in CUB_PARTS
            ]
            bird = FakeBird(
                image_id,
                c,
                j % 2 == 0,
                width,
                height,
                (x, y, w, h),
                parts,
                f"{class_dir}/Fake_Bird_{c}_{image_id:04d}.jpg",
            )
            pixels = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
            pixels[int(y) : int(y + h), int(x) : int(x + w)] = 230
            _save_jpeg(pixels, folder / "images" / bird.path)
            birds.append(bird)
    (folder / "classes.txt").write_text("".join(f"{c + 1} {c + 1:03d}.Fake_Bird_{c}\n" for c in range(num_classes)))
    (folder / "parts" / "parts.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(CUB_PARTS)))
    (folder / "images.txt").write_text("".join(f"{b.image_id} {b.path}\n" for b in birds))
    (folder / "image_class_labels.txt").write_text("".join(f"{b.image_id} {b.cls + 1}\n" for b in birds))
    (folder / "train_test_split.txt").write_text("".join(f"{b.image_id} {int(b.train)}\n" for b in birds))
    (folder / "bounding_boxes.txt").write_text("".join(f"{b.image_id} {' '.join(map(str, b.box))}\n" for b in birds))
    (folder / "parts" / "part_locs.txt").write_text(
        "".join(
            f"{b.image_id} {p + 1} {xy[0] if xy else 0.0} {xy[1] if xy else 0.0} {int(xy is not None)}\n"
            for b in birds
            for p, xy in enumerate(b.parts)
        )
    )
    return birds
