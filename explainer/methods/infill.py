"""In-fillers for perturbation methods (FIDO / BBMP): what replaces the pixels a mask drops.

Every in-filler maps normalised images ``[N, 3, H, W]`` and a hard keep-mask ``[N, 1, H, W]`` (1 = pixel
kept, 0 = dropped) to a fill ``[N, 3, H, W]``; the perturbed image is ``z * x + (1 - z) * fill``. The fill
is computed without gradients (FIDO: "the in-filler gets no gradient"). Sizes given in pixels of a
224-pixel image are rescaled to the actual image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.methods.common import scaled
from explainer.ops import gaussian_blur
from explainer.registry import Registry


class Infill(nn.Module):
    """Base class: ``forward(images, keep, generator=None) -> fill`` (no gradient flows into the fill)."""

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


class MeanInfill(Infill):
    """Fills with 0, the dataset mean colour in normalised space."""

    def fill(self, images: Tensor, keep: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.zeros_like(images)


class BlurInfill(Infill):
    """Fills with a Gaussian blur of the image.

    Args:
        sigma: standard deviation in pixels of a 224-pixel image (FIDO: 10), rescaled to the image size.
    """

    def __init__(self, sigma: float = 10.0) -> None:
        super().__init__()
        self.sigma = float(sigma)

    def fill(self, images: Tensor, keep: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return gaussian_blur(images, scaled(self.sigma, min(images.shape[-2:])))


class LocalMeanInfill(Infill):
    """Fills each pixel with the mean of the *kept* pixels in a square window around it.

    Where the window holds no kept pixel the fill is 0 (the mean colour).

    Args:
        window: side of the window in pixels of a 224-pixel image (FIDO: 15), rescaled to the image size
            and rounded to an odd number of at least 3.
    """

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
    ("blur", BlurInfill),
    ("local_mean", LocalMeanInfill),
    ("random", RandomInfill),
):
    INFILLS.add(_name, _infill)


def build_infill(infill: str | Infill) -> Infill:
    """An in-filler by name (``mean``, ``blur``, ``local_mean``, ``random``) or the given instance."""
    if isinstance(infill, Infill):
        return infill
    return INFILLS.get(infill)()
