"""Toy classifiers whose evidence lives in known regions."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class QuadrantEnergyNet(nn.Module):
    """Class ``c`` scores the energy of channel 0 inside its own quadrant: ``k * (mean_q x0^2 - offset)``.

    Class 0 looks only at the top-left quadrant, class 1 only at the bottom-right one; further classes
    (``num_classes > 2``) have all-zero weights. The weights are trainable parameters, so a test can check
    that an attribution method never touches them. Squared pixels make the score sensitive to blur and
    to masking with zeros alike.

    Args:
        size: image side.
        num_classes: number of logits (at least 2).
        gain: k.
        offset: subtracted from the quadrant energy.
    """

    def __init__(self, size: int = 32, num_classes: int = 2, gain: float = 20.0, offset: float = 0.5) -> None:
        super().__init__()
        half = size // 2
        weight = torch.zeros(num_classes, size, size)
        weight[0, :half, :half] = gain / half**2
        weight[1, half:, half:] = gain / half**2
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.full((num_classes,), -gain * offset))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bhw,chw->bc", x[:, 0] ** 2, self.weight) + self.bias


def noise_images(batch: int, size: int = 32, seed: int = 0) -> Tensor:
    """Images whose channel 0 is random +-1 (energy 1 everywhere, destroyed by blur); other channels 0."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, 3, size, size)
    x[:, 0] = torch.randint(0, 2, (batch, size, size), generator=gen).float() * 2 - 1
    return x


def quadrant_mass(maps: Tensor, quadrant: str = "tl") -> Tensor:
    """Fraction of the positive mass of ``[..., H, W]`` maps inside a quadrant (``tl`` or ``br``)."""
    h, w = maps.shape[-2:]
    pos = maps.clamp_min(0)
    part = pos[..., : h // 2, : w // 2] if quadrant == "tl" else pos[..., h // 2 :, w // 2 :]
    return part.sum(dim=(-2, -1)) / pos.sum(dim=(-2, -1)).clamp_min(1e-12)
