"""A compact in-painting U-Net: the learned in-filler of FIDO (Chang et al., ICLR 2019).

The network reads the masked image ``keep * x`` with the keep mask as a fourth channel and predicts the
whole image; its output is composited as ``keep * x + (1 - keep) * prediction``, so kept pixels pass
through unchanged and only the dropped ones are in-filled.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NET_NAME = "infiller_unet"
"""The name an export records for this network (the only in-filling network of the project)."""


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation),
        nn.LeakyReLU(0.1, inplace=True),
    )


class InfillerNet(nn.Module):
    """U-Net in-painter: ``forward(images, keep) -> keep * images + (1 - keep) * prediction``.

    The input (masked image and mask, 4 channels) is folded into half resolution (``PixelUnshuffle(2)``:
    16 channels, so no convolution runs at full resolution but the last); the encoder halves that
    resolution ``depth`` more times (channels ``width``, ``2 width``, ``4 width``, then capped); the
    bottleneck adds two dilated convolutions so that a large hole is filled from context across the image;
    the decoder upsamples bilinearly and concatenates the encoder's features at each scale; the head
    unfolds 12 channels to a full-resolution image (``PixelShuffle(2)``) and one 3 x 3 convolution over it
    and the input smooths the seams of that unfolding. Images whose sides are not multiples of
    ``2 ** (depth + 1)`` are padded (replicate) and the output cropped back.

    Args:
        width: channels at half resolution.
        depth: halvings after the first (at 64 px, 2 gives an 8 x 8 bottleneck).

    Examples::

        net = InfillerNet(width=24, depth=2)
        completed = net(images, keep)  # images [N, 3, H, W] normalised, keep [N, 1, H, W] in {0, 1}
    """

    def __init__(self, width: int = 24, depth: int = 2) -> None:
        super().__init__()
        if not isinstance(width, int) or not isinstance(depth, int) or width < 1 or not 1 <= depth <= 5:
            raise ValueError(f"InfillerNet needs an integer width >= 1 and depth in [1, 5], got {width!r}, {depth!r}")
        self.width = width
        self.depth = depth
        chans = [min(width * 2**i, 4 * width) for i in range(depth + 1)]
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), _block(16, chans[0]), _block(chans[0], chans[0]))
        self.down = nn.ModuleList(
            nn.Sequential(_block(chans[i], chans[i + 1], stride=2), _block(chans[i + 1], chans[i + 1]))
            for i in range(depth)
        )
        self.bottleneck = nn.Sequential(
            _block(chans[-1], chans[-1], dilation=2), _block(chans[-1], chans[-1], dilation=4)
        )
        self.up = nn.ModuleList(
            nn.Sequential(_block(chans[i + 1] + chans[i], chans[i]), _block(chans[i], chans[i]))
            for i in reversed(range(depth))
        )
        self.head = nn.Sequential(nn.Conv2d(chans[0], 12, 1), nn.PixelShuffle(2))
        self.refine = nn.Conv2d(3 + 4, 3, 3, padding=1)

    def spec(self) -> dict[str, Any]:
        """The network's name and constructor arguments (plain data, as an export records them)."""
        return {"name": NET_NAME, "kwargs": {"width": self.width, "depth": self.depth}}

    def predict(self, images: Tensor, keep: Tensor) -> Tensor:
        """The raw prediction ``[N, 3, H, W]`` of the whole image from ``keep * images`` and ``keep``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the in-filler takes [N, 3, H, W] images, got shape {tuple(images.shape)}")
        if keep.shape != (images.shape[0], 1, *images.shape[-2:]):
            raise ValueError(
                f"the keep mask must be [N, 1, H, W] = {[images.shape[0], 1, *images.shape[-2:]]} for these "
                f"images, got {list(keep.shape)}"
            )
        h, w = images.shape[-2:]
        step = 2 ** (self.depth + 1)
        pad_h, pad_w = (-h) % step, (-w) % step
        x = torch.cat([images * keep, keep], dim=1)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = self.bottleneck(skips.pop())
        for up in self.up:
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = up(torch.cat([y, skip], dim=1))
        coarse = self.head(y)
        return (coarse + self.refine(torch.cat([coarse, x], dim=1)))[..., :h, :w]

    def forward(self, images: Tensor, keep: Tensor) -> Tensor:
        """The in-filled image ``keep * images + (1 - keep) * prediction`` ``[N, 3, H, W]``.

        Args:
            images: ``[N, 3, H, W]`` normalised images.
            keep: ``[N, 1, H, W]`` keep mask (1 kept, 0 dropped).
        """
        keep = keep.to(images.dtype)
        return keep * images + (1 - keep) * self.predict(images, keep)


def build_infiller_net(spec: dict[str, Any]) -> InfillerNet:
    """Rebuilds an :class:`InfillerNet` from its recorded :meth:`~InfillerNet.spec` (plain data only).

    Raises:
        ValueError: the spec names another network or holds arguments the network does not take.
    """
    if not isinstance(spec, dict) or spec.get("name") != NET_NAME:
        found = spec.get("name") if isinstance(spec, dict) else spec
        raise ValueError(f"unknown in-filler network {found!r}; this library builds {NET_NAME!r}")
    kwargs = spec.get("kwargs") or {}
    unknown = set(kwargs) - {"width", "depth"} if isinstance(kwargs, dict) else {"(not a mapping)"}
    if unknown:
        raise ValueError(f"in-filler network arguments {sorted(unknown)} are unknown; {NET_NAME} takes width, depth")
    return InfillerNet(**kwargs)


__all__ = ["NET_NAME", "InfillerNet", "build_infiller_net"]
