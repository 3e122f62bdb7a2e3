"""RISE: randomised input sampling for explanation (Petsiuk et al., BMVC 2018)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.methods.base import AttributionMethod, check_classes, register_method
from explainer.methods.common import chunk_slices, eval_mode
from explainer.ops import check_activation, gather_classes

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_grid_size(height: int, width: int) -> int:
    """The default RISE grid: ``s = clamp(min(H, W) // 8, 2, 8)``.

    8 x 8 cells at 64 px and above (within the paper's 7-10 at 224 px), and cells of about 8 px on
    smaller images (4 x 4 at 32 px).
    """
    return int(min(8, max(2, min(height, width) // 8)))


def rise_masks(num_masks: int, grid_size: int, keep_prob: float, height: int, width: int, seed: int) -> Tensor:
    """The RISE mask bank ``[N, H, W]`` (float32, on the CPU, a pure function of its arguments).

    Each mask is an ``s x s`` grid of Bernoulli(``keep_prob``) cells, upsampled bilinearly to
    ``(s + 1) * cell`` pixels per side with ``cell = ceil(size / s)``, then cropped to ``H x W`` at a random
    shift in ``[0, cell)`` per axis.

    Args:
        num_masks: N.
        grid_size: s.
        keep_prob: p1.
        height: H.
        width: W.
        seed: the seed of the generator that draws the grids and the shifts.

    Returns:
        The masks, values in [0, 1].
    """
    gen = torch.Generator().manual_seed(int(seed))
    cell_h, cell_w = math.ceil(height / grid_size), math.ceil(width / grid_size)
    grids = (torch.rand(num_masks, 1, grid_size, grid_size, generator=gen) < keep_prob).float()
    up = F.interpolate(
        grids, size=((grid_size + 1) * cell_h, (grid_size + 1) * cell_w), mode="bilinear", align_corners=False
    ).squeeze(1)
    shift_y = torch.randint(0, cell_h, (num_masks,), generator=gen)
    shift_x = torch.randint(0, cell_w, (num_masks,), generator=gen)
    rows = (shift_y[:, None] + torch.arange(height)[None]).view(num_masks, height, 1)
    cols = (shift_x[:, None] + torch.arange(width)[None]).view(num_masks, 1, width)
    return up[torch.arange(num_masks).view(-1, 1, 1), rows, cols].clamp_(0.0, 1.0)  # clamp float rounding


@register_method
class RISE(AttributionMethod):
    """RISE saliency: the average of random masks weighted by the classifier's score on the masked image.

    ``S_c = 1 / (N * p1) * sum_i f_c(I * M_i) * M_i`` for every class at once (one matrix product), with
    ``f`` the sigmoid (multi-label, default) or softmax probabilities. Masks multiply the normalised
    image, so dropped pixels take the dataset mean colour. The maps are estimates of ``E[f_c | pixel kept]``
    and therefore carry a constant offset of about ``E[f_c]``; only their ranking matters to the
    pointing game and the insertion / deletion metrics.

    The mask bank is drawn once from ``seed`` (on the CPU, so it is the same on every device) and kept as
    a non-persistent buffer; it is drawn again only when the image size or one of ``num_masks``,
    ``grid_size``, ``keep_prob``, ``seed`` changes. It takes ``N * H * W`` values of ``bank_dtype``
    (4000 masks at 224 px: 800 MB in float32, 400 MB in float16).

    Args:
        classifier: the model explained (logits).
        num_masks: N, the number of masks (paper: 4000-8000).
        grid_size: s, the mask grid; ``None`` picks :func:`default_grid_size` from the image size.
        keep_prob: p1, the probability that a grid cell is kept (paper: 0.1-0.5).
        activation: ``sigmoid`` (multi-label) or ``softmax`` (single-label) scores.
        batch_size: masked images per forward pass (the masks are processed in chunks of
            ``max(1, batch_size // B)``); does not change the result beyond float rounding.
        seed: the seed of the mask bank.
        bank_dtype: ``float32``, ``float16`` or ``bfloat16`` storage of the mask bank.
    """

    name = "rise"
    cost = "perturbation"
    needs_grad = False

    def __init__(
        self,
        classifier: nn.Module | None = None,
        num_masks: int = 4000,
        grid_size: int | None = None,
        keep_prob: float = 0.5,
        activation: str = "sigmoid",
        batch_size: int = 256,
        seed: int = 0,
        bank_dtype: str = "float32",
    ) -> None:
        super().__init__(classifier)
        if classifier is None:
            raise ValueError("RISE needs the classifier to explain")
        if num_masks < 1:
            raise ValueError(f"num_masks must be >= 1, got {num_masks}")
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
        if grid_size is not None and grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {grid_size}")
        if bank_dtype not in _DTYPES:
            raise ValueError(f"unknown bank_dtype '{bank_dtype}'; expected one of {list(_DTYPES)}")
        self.num_masks = int(num_masks)
        self.grid_size = grid_size
        self.keep_prob = float(keep_prob)
        self.activation = check_activation(activation)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.bank_dtype = bank_dtype
        self.register_buffer("masks", torch.empty(0), persistent=False)
        self._bank_key: tuple[Any, ...] | None = None

    def mask_bank(self, height: int, width: int, device: torch.device | None = None) -> Tensor:
        """The ``[N, H, W]`` masks for images of ``height x width`` (drawn on first use, then reused)."""
        grid = self.grid_size or default_grid_size(height, width)
        key = (self.num_masks, grid, self.keep_prob, self.seed, height, width, self.bank_dtype)
        if key != self._bank_key:
            masks = rise_masks(self.num_masks, grid, self.keep_prob, height, width, self.seed)
            self.masks = masks.to(device=device or self.masks.device, dtype=_DTYPES[self.bank_dtype])
            self._bank_key = key
        elif device is not None and self.masks.device != device:
            self.masks = self.masks.to(device)
        return self.masks

    def saliency(self, images: Tensor) -> Tensor:
        """RISE maps of every class ``[B, C, H, W]``."""
        b, _, h, w = images.shape
        masks = self.mask_bank(h, w, images.device)
        n = masks.shape[0]
        total: Tensor | None = None
        per_chunk = max(1, self.batch_size // b)
        with torch.no_grad(), eval_mode(self.classifier):
            for part in chunk_slices(n, per_chunk):
                m = masks[part].to(images.dtype)  # [n, H, W]
                masked = images[:, None] * m[None, :, None]  # [B, n, 3, H, W]
                logits = self.classifier(masked.reshape(-1, *images.shape[1:])).float()
                probs = torch.sigmoid(logits) if self.activation == "sigmoid" else logits.softmax(1)
                probs = probs.view(b, m.shape[0], -1)  # [B, n, C]
                contrib = torch.einsum("bnc,nx->bcx", probs, m.reshape(m.shape[0], -1).float())
                total = contrib if total is None else total + contrib
        assert total is not None
        return (total / (n * self.keep_prob)).view(b, -1, h, w)

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        """RISE maps ``[B, K, H, W]`` of ``classes`` ``[B, K]`` (``-1`` gives a zero map)."""
        check_classes(images, classes)
        return gather_classes(self.saliency(images), classes).to(images.dtype)
