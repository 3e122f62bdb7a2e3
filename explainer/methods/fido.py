"""FIDO and BBMP: per-image mask optimisation with an in-filler (Chang et al., ICLR 2019).

Both optimise a coarse mask per (image, class) pair against one of two objectives, with ``s`` the
log-odds of the class (:func:`~explainer.methods.common.class_log_odds`: the logit for a multi-label
sigmoid classifier, ``z_c - logsumexp_{c' != c} z_c'`` for a softmax one):

* SSR, smallest sufficient region: minimise ``E[-s(x~)] + lambda * sum(1 - p_drop)``; the map is the
  keep probability ``1 - p_drop`` (what suffices to keep the class);
* SDR, smallest destroying region: minimise ``E[s(x~)] + lambda * sum(p_drop)``; the map is ``p_drop``
  (what destroys the class when dropped).

``x~ = z * x + (1 - z) * G(x, round(z))`` with the keep mask ``z`` upsampled bilinearly from the grid
and ``G`` an in-filler (:mod:`explainer.methods.infill`) that gets no gradient.

The grid is 56 x 56 at 224 px, i.e. one cell per 4 pixels; smaller images get ``ceil(size / 4)`` cells
per side (16 x 16 at 64 px). The area term sums over the grid and is scaled by ``56^2 / (cells)`` so that
``lambda`` weighs the same fraction of the image whatever the grid (at 224 px it is the paper's sum).

Every (image, class) pair is optimised at once in one batch (the pairs of a chunk of ``batch_size``
images), with one Adam optimiser whose updates are element-wise, so a pair's result does not depend on
the other pairs: the Concrete noise of a step is shared by all pairs and re-drawn from ``seed`` for
each chunk, which makes a batched run equal to one image at a time (up to float rounding). The one
exception is the ``random`` in-filler, which draws its colours and noise per batch row.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.methods.base import AttributionMethod, check_classes, register_method
from explainer.methods.common import chunk_slices, class_log_odds, eval_mode, scatter_pairs, valid_pairs
from explainer.methods.infill import Infill, build_infill
from explainer.ops import check_activation

OBJECTIVES = ("ssr", "sdr")
_REFERENCE_CELLS = 56 * 56


def default_mask_grid(height: int, width: int) -> tuple[int, int]:
    """The FIDO / BBMP mask grid: one cell per 4 pixels (56 x 56 at 224 px, 16 x 16 at 64 px)."""
    return max(1, math.ceil(height / 4)), max(1, math.ceil(width / 4))


class _MaskOptimisation(AttributionMethod):
    """Shared optimisation loop of FIDO and BBMP (see the module docstring)."""

    needs_grad = True
    unit_range = True

    def __init__(
        self,
        classifier: nn.Module | None,
        objective: str,
        infill: str | Infill,
        iterations: int,
        lr: float,
        samples: int,
        area_weight: float,
        ramp_iterations: int,
        grid_size: int | None,
        activation: str,
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__(classifier)
        if classifier is None:
            raise ValueError(f"{type(self).__name__} needs the classifier to explain")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective '{objective}'; expected one of {OBJECTIVES}")
        if iterations < 1 or samples < 1:
            raise ValueError(f"iterations and samples must be >= 1, got {iterations} and {samples}")
        self.objective = objective
        self.infill = build_infill(infill)
        self.iterations = int(iterations)
        self.lr = float(lr)
        self.samples = int(samples)
        self.area_weight = float(area_weight)
        self.ramp_iterations = int(ramp_iterations)
        self.grid_size = grid_size
        self.activation = check_activation(activation)
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    # the parametrisation, implemented by FIDO and BBMP
    def init_params(self, pairs: int, grid: tuple[int, int], device: torch.device) -> Tensor:
        raise NotImplementedError

    def keep_masks(self, params: Tensor, generator: torch.Generator) -> Tensor:
        """``[S, P, 1, gh, gw]`` keep masks for one step."""
        raise NotImplementedError

    def drop_prob(self, params: Tensor) -> Tensor:
        """``[P, 1, gh, gw]`` drop probability."""
        raise NotImplementedError

    def project(self, params: Tensor) -> None:
        """Projection after each step (in place)."""

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        if self.grid_size is None:
            return default_mask_grid(height, width)
        return int(self.grid_size), int(self.grid_size)

    def optimise(self, images: Tensor, targets: Tensor) -> Tensor:
        """Optimises the masks of ``images`` ``[P, 3, H, W]`` for ``targets`` ``[P]``; returns maps ``[P, H, W]``."""
        p, _, h, w = images.shape
        grid = self._grid(h, w)
        params = self.init_params(p, grid, images.device).requires_grad_(True)
        optimiser = torch.optim.Adam([params], lr=self.lr)
        noise_gen = torch.Generator().manual_seed(self.seed)
        fill_gen = torch.Generator(device=images.device).manual_seed(self.seed + 1)
        area_scale = self.area_weight * _REFERENCE_CELLS / (grid[0] * grid[1])
        sign = -1.0 if self.objective == "ssr" else 1.0
        for step in range(self.iterations):
            optimiser.param_groups[0]["lr"] = self.lr * (1.0 - step / self.iterations)
            ramp = min(1.0, step / self.ramp_iterations) if self.ramp_iterations > 0 else 1.0
            z = self.keep_masks(params, noise_gen)  # [S, P, 1, gh, gw]
            s = z.shape[0]
            z = F.interpolate(z.reshape(s * p, 1, *grid), size=(h, w), mode="bilinear", align_corners=False)
            z = z.to(images.dtype)
            x = images.unsqueeze(0).expand(s, -1, -1, -1, -1).reshape(s * p, *images.shape[1:])
            fill = self.infill(x, torch.round(z), fill_gen)
            logits = self.classifier(z * x + (1 - z) * fill)
            score = class_log_odds(logits.float(), targets.repeat(s), self.activation).view(s, p)
            drop = self.drop_prob(params).flatten(1).sum(1)
            area = drop if self.objective == "sdr" else (grid[0] * grid[1] - drop)
            loss = (sign * score.mean(0) + ramp * area_scale * area).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward(inputs=[params])
            optimiser.step()
            with torch.no_grad():
                self.project(params)
        with torch.no_grad():
            drop = self.drop_prob(params.detach())
            saliency = drop if self.objective == "sdr" else 1 - drop
            return F.interpolate(saliency, size=(h, w), mode="bilinear", align_corners=False).squeeze(1)

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        """Maps ``[B, K, H, W]`` of ``classes`` ``[B, K]`` (``-1`` gives a zero map); see the module docstring."""
        check_classes(images, classes)
        b_idx, k_idx, c_idx = valid_pairs(classes)
        maps = []
        per_chunk = max(1, self.batch_size // self.samples)
        with torch.enable_grad(), eval_mode(self.classifier):
            for part in chunk_slices(len(b_idx), per_chunk):
                maps.append(self.optimise(images[b_idx[part]].detach(), c_idx[part]))
        values = torch.cat(maps) if maps else images.new_zeros(0, *images.shape[-2:])
        return scatter_pairs(values.to(images.dtype), b_idx, k_idx, tuple(classes.shape))


@register_method
class FIDO(_MaskOptimisation):
    """FIDO: a Concrete (relaxed Bernoulli) drop mask learnt per image and class.

    ``p_drop = sigmoid(theta)`` on the grid, ``theta`` starts at 0; each step draws ``samples`` keep masks
    ``z = 1 - sigmoid((logit(p_drop) + logit(u)) / temperature)``, ``u ~ U(0, 1)``. Adam with the learning
    rate decayed linearly from ``lr`` to 0, ``area_weight`` ramped linearly from 0 over the first
    ``ramp_iterations`` steps. See the module docstring for the objectives, grid and batching.

    Args:
        classifier: the model explained (logits).
        objective: ``ssr`` (smallest sufficient region) or ``sdr`` (smallest destroying region).
        infill: ``blur`` (default), ``mean``, ``local_mean``, ``random`` or an :class:`Infill` instance.
        iterations: optimisation steps (paper: 300).
        lr: initial Adam learning rate (paper: 0.05).
        samples: Concrete samples per step (paper: 8).
        area_weight: lambda (paper: 1e-3 per cell of a 56 x 56 grid).
        ramp_iterations: steps of the linear 0 -> 1 ramp of lambda (paper: 30).
        temperature: Concrete temperature (paper: 0.1).
        grid_size: cells per side of the mask grid; ``None``: one cell per 4 pixels.
        activation: ``sigmoid`` (multi-label) or ``softmax`` (single-label) log-odds.
        batch_size: perturbed images per forward pass (pairs are optimised in chunks of
            ``batch_size // samples``).
        seed: seed of the Concrete noise (and of the ``random`` in-filler).
    """

    name = "fido"
    cost = "optimisation"

    def __init__(
        self,
        classifier: nn.Module | None = None,
        objective: str = "ssr",
        infill: str | Infill = "blur",
        iterations: int = 300,
        lr: float = 0.05,
        samples: int = 8,
        area_weight: float = 1e-3,
        ramp_iterations: int = 30,
        temperature: float = 0.1,
        grid_size: int | None = None,
        activation: str = "sigmoid",
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(
            classifier,
            objective,
            infill,
            iterations,
            lr,
            samples,
            area_weight,
            ramp_iterations,
            grid_size,
            activation,
            batch_size,
            seed,
        )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def init_params(self, pairs: int, grid: tuple[int, int], device: torch.device) -> Tensor:
        return torch.zeros(pairs, 1, *grid, device=device)

    def keep_masks(self, params: Tensor, generator: torch.Generator) -> Tensor:
        u = torch.rand(self.samples, 1, 1, *params.shape[-2:], generator=generator).clamp(1e-6, 1 - 1e-6)
        logit_u = (torch.log(u) - torch.log1p(-u)).to(params.device)
        return 1 - torch.sigmoid((params.unsqueeze(0) + logit_u) / self.temperature)

    def drop_prob(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)


@register_method
class BBMP(_MaskOptimisation):
    """BBMP: a deterministic keep mask ``m`` in [0, 1] on the grid, starting at 1, clamped after each step.

    Same objectives, schedule, grid and batching as :class:`FIDO`, with ``p_drop = 1 - m`` and ``z = m``
    (one deterministic sample per step).

    Args:
        classifier: the model explained (logits).
        objective: ``ssr`` or ``sdr``.
        infill: ``blur`` (default), ``mean``, ``local_mean``, ``random`` or an :class:`Infill` instance.
        iterations: optimisation steps (300).
        lr: initial Adam learning rate (0.05).
        area_weight: lambda (1e-3 per cell of a 56 x 56 grid).
        ramp_iterations: steps of the linear 0 -> 1 ramp of lambda (30).
        grid_size: cells per side of the mask grid; ``None``: one cell per 4 pixels.
        activation: ``sigmoid`` or ``softmax`` log-odds.
        batch_size: perturbed images per forward pass.
        seed: seed of the ``random`` in-filler.
    """

    name = "bbmp"
    cost = "optimisation"

    def __init__(
        self,
        classifier: nn.Module | None = None,
        objective: str = "ssr",
        infill: str | Infill = "blur",
        iterations: int = 300,
        lr: float = 0.05,
        area_weight: float = 1e-3,
        ramp_iterations: int = 30,
        grid_size: int | None = None,
        activation: str = "sigmoid",
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(
            classifier,
            objective,
            infill,
            iterations,
            lr,
            1,
            area_weight,
            ramp_iterations,
            grid_size,
            activation,
            batch_size,
            seed,
        )

    def init_params(self, pairs: int, grid: tuple[int, int], device: torch.device) -> Tensor:
        return torch.ones(pairs, 1, *grid, device=device)

    def keep_masks(self, params: Tensor, generator: torch.Generator) -> Tensor:
        return params.unsqueeze(0)

    def drop_prob(self, params: Tensor) -> Tensor:
        return 1 - params

    def project(self, params: Tensor) -> None:
        params.clamp_(0.0, 1.0)
