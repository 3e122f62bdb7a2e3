"""In-fillers for perturbation methods (FIDO / BBMP): what replaces the pixels a mask drops.

Every in-filler maps normalised images ``[N, 3, H, W]`` and a hard keep-mask ``[N, 1, H, W]`` (1 = pixel
kept, 0 = dropped) to a fill ``[N, 3, H, W]``; the perturbed image is ``z * x + (1 - z) * fill``. The fill
is computed without gradients (FIDO: "the in-filler gets no gradient"). Sizes given in pixels of a
224-pixel image are rescaled to the actual image size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.methods.common import scaled
from explainer.ops import gaussian_blur
from explainer.registry import Registry


class Infill(nn.Module):
    """Base class: ``forward(images, keep, generator=None) -> fill`` (no gradient flows into the fill).

    ``mask_dependent`` says whether the fill depends on ``keep`` (a local mean, a learned in-painter); a fill
    that does not (mean, blur) is computed once for all the masks of an image.
    """

    mask_dependent: bool = False

    def set_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """The data's normalisation, for fills defined in pixel space (black); most fills ignore it."""

    def fill(self, images: Tensor, keep: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The fill of ``images`` given the hard keep-mask ``keep``."""
        raise NotImplementedError

    def forward(self, images: Tensor, keep: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The fill ``[N, 3, H, W]``, detached from the graph.

        Args:
            images: ``[N, 3, H, W]`` normalised images.
            keep: ``[N, 1, H, W]`` hard keep-mask (1 kept, 0 dropped).
            generator: random generator for stochastic in-fillers (on the images' device).
        """
        with torch.no_grad():
            return self.fill(images.detach(), keep.detach().to(images.dtype), generator)

    def check_data(
        self, image_size: int | Sequence[int] | None, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> None:
        """Refuses data this in-filler cannot fill (a learned in-filler trained on another image size or
        normalisation); the heuristic in-fillers fill any data, so here it does nothing.

        Args:
            image_size: the data's side or ``(H, W)`` (``None``: unknown).
            mean: the data's normalisation mean (``None``: unknown).
            std: the data's normalisation standard deviation (``None``: unknown).
        """


class MeanInfill(Infill):
    """Fills with 0, the dataset mean colour in normalised space."""

    def fill(self, images: Tensor, keep: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.zeros_like(images)


class BlackInfill(Infill):
    """Fills with black (pixel value 0), i.e. ``-mean / std`` in normalised space."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("black", torch.zeros(1, 3, 1, 1), persistent=False)

    def set_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        black = -torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)
        self.black.copy_(black.view(1, -1, 1, 1))

    def fill(self, images: Tensor, keep: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.black.to(images.dtype).expand_as(images)


class BlurInfill(Infill):
    """Fills with a Gaussian blur of the image.

    Args:
        sigma: standard deviation in pixels of a ``reference_size``-pixel image (FIDO: 10 at 224), rescaled
            to the image size; with ``reference_size=None``, in pixels of the image itself.
        reference_size: the image side ``sigma`` refers to.
        padding_mode: how the blur pads the border (``replicate`` or ``reflect``).
    """

    def __init__(self, sigma: float = 10.0, reference_size: int | None = 224, padding_mode: str = "replicate") -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.reference_size = reference_size
        self.padding_mode = padding_mode

    def fill(self, images: Tensor, keep: Tensor, generator: torch.Generator | None = None) -> Tensor:
        sigma = self.sigma
        if self.reference_size is not None:
            sigma = scaled(sigma, min(images.shape[-2:]), self.reference_size)
        return gaussian_blur(images, sigma, padding_mode=self.padding_mode)


class LocalMeanInfill(Infill):
    """Fills each pixel with the mean of the *kept* pixels in a square window around it.

    Where the window holds no kept pixel the fill is 0 (the mean colour).

    Args:
        window: side of the window in pixels of a 224-pixel image (FIDO: 15), rescaled to the image size
            and rounded to an odd number of at least 3.
    """

    mask_dependent = True

    def __init__(self, window: int = 15) -> None:
        super().__init__()
        self.window = int(window)

    def window_size(self, size: int) -> int:
        """The odd window side used for images of ``size`` pixels."""
        k = max(3, int(round(scaled(self.window, size))))
        return k if k % 2 else k + 1

    def fill(self, images: Tensor, keep: Tensor, generator: torch.Generator | None = None) -> Tensor:
        k = self.window_size(min(images.shape[-2:]))
        total = F.avg_pool2d(images * keep, k, stride=1, padding=k // 2, count_include_pad=True)
        count = F.avg_pool2d(keep, k, stride=1, padding=k // 2, count_include_pad=True)
        return torch.where(count > 1e-6, total / count.clamp_min(1e-6), torch.zeros_like(total))


class RandomInfill(Infill):
    """Fills with one random colour per image plus per-pixel Gaussian noise.

    The colour is uniform in ``[-color_range, color_range]`` per channel (normalised space, where the
    data lie within about +-2) and the noise is ``N(0, noise_std^2)``.

    Args:
        noise_std: standard deviation of the pixel noise (FIDO: 0.2).
        color_range: half-width of the uniform colour range.
    """

    def __init__(self, noise_std: float = 0.2, color_range: float = 1.0) -> None:
        super().__init__()
        self.noise_std = float(noise_std)
        self.color_range = float(color_range)

    def fill(self, images: Tensor, keep: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n, c = images.shape[:2]
        colour = torch.rand(n, c, 1, 1, generator=generator, device=images.device, dtype=images.dtype) * 2 - 1
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        return colour * self.color_range + noise * self.noise_std


INFILLS: Registry[type[Infill]] = Registry("in-filler", plural="in-fillers", sort=False)
for _name, _infill in (
    ("mean", MeanInfill),
    ("zero", BlackInfill),
    ("blur", BlurInfill),
    ("local_mean", LocalMeanInfill),
    ("random", RandomInfill),
):
    INFILLS.add(_name, _infill)


LEARNED_PREFIX = "learned="
"""``learned=<export folder>`` names a learned in-filler (:class:`~explainer.methods.learned_infill.LearnedInfill`)."""

FILE_INFILLS: dict[str, type[Infill]] = {}
"""In-fillers loaded from a file, by the prefix that names them (``learned=``); each module registers its own
(:mod:`explainer.methods.learned_infill`, imported with :mod:`explainer.methods`)."""


def build_infill(infill: str | Infill) -> Infill:
    """An in-filler by name (``mean``, ``blur``, ``local_mean``, ``random``), a learned in-filler as
    ``learned=<export folder>`` (trained by ``configs/quickstart/infiller.yaml``), or the given instance."""
    if isinstance(infill, Infill):
        return infill
    if isinstance(infill, str) and infill.startswith(LEARNED_PREFIX):
        path = infill[len(LEARNED_PREFIX) :].strip()
        if not path:
            raise ValueError(
                "'learned=' needs an in-filler export folder, e.g. learned=checkpoints/quickstart/infiller"
            )
        return FILE_INFILLS[LEARNED_PREFIX](path)
    return INFILLS.get(infill)()
