"""The image decoders of the file-backed data modules: same pixels and the same errors through either."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from explainer.data import VOC2007DataModule
from explainer.data.files import CorruptImageError, read_image
from tests.data.fake_datasets import make_voc2007, random_images, truncate_file


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from sklearn.datasets import load_sample_images

    return load_sample_images().images[1][:375, :500]


@pytest.mark.parametrize(
    "mode, options", [("RGB", {"quality": 90}), ("RGB", {"progressive": True}), ("L", {}), ("CMYK", {})]
)
def test_torchvision_decodes_the_same_pixels_as_pillow(tmp_path, photo, mode, options):
    path = tmp_path / "image.jpg"
    Image.fromarray(photo).convert(mode).save(path, **options)
    pil, tv = read_image(path, "pil"), read_image(path, "torchvision")
    assert pil.shape == tv.shape == (3, 375, 500) and tv.dtype == torch.uint8
    assert torch.equal(pil, tv)
    assert tv.permute(1, 2, 0).is_contiguous()  # channels-last, like Pillow's: the fast path of resize


def test_other_formats_go_through_pillow(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "image.png")
    expected = torch.from_numpy(photo.copy()).permute(2, 0, 1)
    assert torch.equal(read_image(tmp_path / "image.png", "torchvision"), expected)


def test_truncated_missing_and_garbage_files_are_the_same_errors(tmp_path, photo):
    path = tmp_path / "image.jpg"
    Image.fromarray(photo).save(path)
    truncate_file(path)
    for decoder in ("pil", "torchvision"):
        with pytest.raises(CorruptImageError, match="image.jpg"):
            read_image(path, decoder)
        with pytest.raises(FileNotFoundError, match="missing.jpg"):
            read_image(tmp_path / "missing.jpg", decoder)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4 + b"\xff\xd9")  # JPEG markers, no image
    for decoder in ("pil", "torchvision"):
        with pytest.raises(CorruptImageError, match="garbage.jpg"):
            read_image(garbage, decoder)


def test_an_unknown_decoder_is_refused():
    with pytest.raises(ValueError, match="decoder='nvjpeg'.*'pil', 'torchvision'"):
        VOC2007DataModule("data/voc", decoder="nvjpeg")
    with pytest.raises(ValueError, match="unknown image decoder 'x'"):
        read_image("any.jpg", "x")


def test_the_data_module_decodes_with_its_option_and_the_samples_match(tmp_path):
    images = random_images(6, 500, 375, 20, seed=0, splits=("train",))
    make_voc2007(tmp_path, images, quality=90, photographs=True)
    samples = {}
    for decoder in ("pil", "torchvision"):
        module = VOC2007DataModule(str(tmp_path), num_workers=0, batch_size=3, decoder=decoder)
        module.setup("fit")
        assert module.datasets["train"].decoder == decoder
        samples[decoder] = next(iter(module.train_dataloader()))
    pil, tv = samples["pil"], samples["torchvision"]
    assert pil.ids == tv.ids and torch.equal(pil.image, tv.image) and pil.image.shape == (3, 3, 224, 224)
    kb = [img.path.stat().st_size / 1024 for img in images]
    assert 30 < np.mean(kb) < 200  # photograph-like file sizes, not flat noise or flat colour
