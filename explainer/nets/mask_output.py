"""Options on a mask network's output, shared by every registered network: how logits become masks, and a
per-class spatial prior for the per-cell classes of the grid protocols.

Both are mask-network options (``mask_net_kwargs``), so an export records them in its ``config.json`` and
:func:`explainer.export.load` rebuilds them; every consumer keeps reading masks as ``sigmoid(logits)``.

``output``:

* ``sigmoid`` (the paper's): ``m = sigmoid(S)``, in ``(0, 1)``. A mask never reaches 0, and the floor it
  keeps over the whole image counts in every mass-based score (IoU, the grid protocols' localisation).
* ``clipped``: the sigmoid with its floor cut, ``m = max(0, sigmoid(S) - floor) / (1 - floor)``: exactly 0
  where ``sigmoid(S) <= floor`` (default 0.05), smooth and strictly increasing above, so the top of a mask
  keeps its ranking (no plateau of ties at 1). In training the gradient is the sigmoid's everywhere
  (a straight-through estimate, ``sigmoid(S) / (1 - floor)`` in the backward pass): a mask cut to 0 can
  still grow back, and the loss sees the cut masks.
* ``hard_concrete``: the stretched and clipped sigmoid of the hard-concrete distribution (Louizos, Welling
  and Kingma, ICLR 2018, "Learning Sparse Neural Networks through L0 Regularization"),
  ``m = clip(sigmoid(S') * (zeta - gamma) + gamma, 0, 1)`` with ``gamma = -0.1``, ``zeta = 1.1`` (their
  values). In training ``S' = (S + log u - log(1 - u)) / temperature`` with ``u ~ U(0, 1)`` per pixel, a
  relaxed Bernoulli sample; in evaluation ``S' = S``, their test-time estimator. A mask is exactly 0 where
  ``sigmoid(S') < 1/12`` and exactly 1 above ``11/12``. The network's output is then ``logit(m)``, clamped
  at ``±logit(1 - 1e-6)``, so ``sigmoid`` of it gives ``m`` back (to 1e-6).

``cells``: ``n`` of ``n x n`` grids whose classes are per-cell (DiFull, DiPart: class ``i * K + c`` is class
``c`` in cell ``i``, ``K = C / n^2``). A learned bias map ``[C, n, n]`` is added to the logits, upsampled
(nearest) to the image; it starts at 0 in a class's own cell and at ``-cell_prior`` in the others. A
fully convolutional network sees a digit the same wherever it is, so without the prior the ``n^2`` heads
of one digit start (and may stay) as one shared head; the prior tells them apart from the first step,
and training may move it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HARD_CONCRETE_STRETCH = (-0.1, 1.1)
"""``(gamma, zeta)`` of the hard-concrete stretch (Louizos et al., 2018)."""
LOGIT_EPS = 1e-6
PRIOR_KEY = "cell_prior"
"""The state-dict key of the cell prior (beside the network's own keys, which it leaves unchanged)."""


def hard_concrete(logits: Tensor, training: bool, temperature: float = 2 / 3) -> Tensor:
    """Hard-concrete masks in ``[0, 1]`` from logits: a relaxed sample in training, their test-time estimate
    ``clip(sigmoid(S) * 1.2 - 0.1, 0, 1)`` in evaluation."""
    gamma, zeta = HARD_CONCRETE_STRETCH
    if training:
        u = torch.rand_like(logits).clamp(LOGIT_EPS, 1 - LOGIT_EPS)
        s = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    else:
        s = torch.sigmoid(logits)
    return (s * (zeta - gamma) + gamma).clamp(0, 1)


def clipped_sigmoid(logits: Tensor, floor: float = 0.05) -> Tensor:
    """``max(0, sigmoid(S) - floor) / (1 - floor)``, with the gradient of ``sigmoid(S) / (1 - floor)``."""
    smooth = torch.sigmoid(logits) / (1 - floor)
    cut = (smooth - floor / (1 - floor)).clamp(min=0)
    return smooth + (cut - smooth).detach()


def cell_prior_init(num_classes: int, cells: int, strength: float) -> Tensor:
    """``[C, n, n]``: 0 in each per-cell class's own cell, ``-strength`` in the others."""
    if cells < 1 or num_classes % (cells * cells):
        raise ValueError(
            f"cells={cells}: {num_classes} classes are not n^2 = {cells * cells} cells times a class count; "
            "cells is the grid size of a per-cell protocol (DiFull, DiPart), or 0 for none"
        )
    own_cell = torch.arange(num_classes) // (num_classes // (cells * cells))
    prior = torch.full((num_classes, cells * cells), -float(strength))
    prior[torch.arange(num_classes), own_cell] = 0.0
    return prior.view(num_classes, cells, cells)


def _apply_output(module: nn.Module, inputs: Any, logits: Tensor) -> Tensor:
    """Forward hook: the prior, then the output parametrisation, on the network's logits."""
    prior = getattr(module, PRIOR_KEY, None)
    if prior is not None:
        logits = logits + F.interpolate(prior[None].to(logits.dtype), size=logits.shape[-2:], mode="nearest")
    to_masks = _OUTPUTS[module.mask_output]
    return logits if to_masks is None else _logit(to_masks(module, logits.float())).to(logits.dtype)


def _logit(masks: Tensor) -> Tensor:
    """``logit`` of masks in ``[0, 1]`` clamped to ``[eps, 1 - eps]``, with the gradient passed through the clamp
    (its ``sigmoid`` is then the mask, and a mask at exactly 0 still carries its straight-through gradient)."""
    clamped = masks.clamp(LOGIT_EPS, 1 - LOGIT_EPS)
    clamped = masks + (clamped - masks).detach()
    return torch.log(clamped) - torch.log1p(-clamped)


_OUTPUTS = {
    "sigmoid": None,  # the logits as they are
    "clipped": lambda net, logits: clipped_sigmoid(logits, net.mask_floor),
    "hard_concrete": lambda net, logits: hard_concrete(logits, net.training, net.mask_temperature),
}
"""Each output's masks in ``[0, 1]`` from the network and its logits."""


def attach_mask_output(
    net: nn.Module,
    num_classes: int,
    output: Literal["sigmoid", "clipped", "hard_concrete"] = "sigmoid",
    temperature: float = 2 / 3,
    floor: float = 0.05,
    cells: int = 0,
    cell_prior: float = 4.0,
) -> nn.Module:
    """Adds the output options to a built network, in place (see the module docstring); returns it.

    The network keeps its class and state-dict keys; the prior adds one parameter, ``cell_prior``.
    """
    if output not in _OUTPUTS:
        raise ValueError(f"unknown mask output {output!r}; choose one of {', '.join(_OUTPUTS)}")
    if not temperature > 0:
        raise ValueError(f"the hard-concrete temperature must be > 0, got {temperature}")
    if not 0 <= floor < 1:
        raise ValueError(f"the clipped output's floor must be in [0, 1), got {floor}")
    if cells < 0:
        raise ValueError(f"cells must be >= 0 (0: no cell prior), got {cells}")
    net.mask_output = output
    net.mask_temperature = float(temperature)
    net.mask_floor = float(floor)
    if cells:
        net.register_parameter(PRIOR_KEY, nn.Parameter(cell_prior_init(num_classes, int(cells), cell_prior)))
    if output != "sigmoid" or cells:
        net.register_forward_hook(_apply_output)
    return net


MASK_OUTPUTS = tuple(_OUTPUTS)
"""The output names, the paper's first."""

__all__ = [
    "HARD_CONCRETE_STRETCH",
    "MASK_OUTPUTS",
    "PRIOR_KEY",
    "attach_mask_output",
    "cell_prior_init",
    "hard_concrete",
]
