"""FastSHAP's objective (Jethani et al., "FastSHAP: Real-Time Shapley Value Estimation", ICLR 2022), as pure
functions.

With ``d`` players (here: image cells), a value function ``v`` (class probabilities of a model on the image
with the players outside a coalition ``S`` removed) and predicted values ``phi``, FastSHAP minimises

    E_x E_{S ~ p_Sh} || v_x(S) - v_x(0) - 1_S^T phi(x) ||^2

with ``p_Sh(S)`` proportional to ``(d - 1) / (C(d, |S|) |S| (d - |S|))`` for ``0 < |S| < d`` (the Shapley
kernel), after the additive efficiency normalisation

    phi <- phi + (v_x(1) - v_x(0) - 1^T phi) / d

so the values always sum to ``v_x(1) - v_x(0)``. Its minimiser is the Shapley values of ``v_x`` (the weighted
least-squares characterisation of Charnes et al., 1988; Lundberg and Lee, 2017). Coalitions are drawn with
paired sampling: each drawn ``S`` with its complement (Covert and Lee, 2021).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def shapley_kernel_size_probabilities(d: int) -> Tensor:
    """``[d + 1]`` probabilities of the coalition sizes ``0..d`` under the Shapley kernel: ``(d - 1) / (k (d - k))``
    normalised over ``0 < k < d``, and 0 for the empty and the full coalition."""
    if d < 2:
        raise ValueError(f"the Shapley kernel needs at least 2 players, got d={d}")
    k = torch.arange(d + 1, dtype=torch.float64)
    weights = torch.zeros(d + 1, dtype=torch.float64)
    inner = k[1:d]
    weights[1:d] = (d - 1) / (inner * (d - inner))
    return weights / weights.sum()


def shapley_kernel_sample(
    batch: int, d: int, num_samples: int, paired: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """Coalitions ``[batch, num_samples, d]`` (1 = the player is in ``S``) drawn from the Shapley kernel.

    A size ``k`` is drawn with probability proportional to ``(d - 1) / (k (d - k))``, then a uniform subset of
    that size. With ``paired``, the first half are drawn and the second half are their complements
    (``S[:, n/2 + i] = 1 - S[:, i]``), so ``num_samples`` must be even.

    Args:
        batch: images.
        d: players (cells).
        num_samples: coalitions per image.
        paired: add each drawn coalition's complement.
        generator: the random generator (``None``: the global one).

    Returns:
        A float tensor of 0 and 1 on the CPU.
    """
    if num_samples < 1 or (paired and num_samples % 2):
        raise ValueError(f"num_samples must be a positive{' even' if paired else ''} number, got {num_samples}")
    drawn = num_samples // 2 if paired else num_samples
    probs = shapley_kernel_size_probabilities(d).float()
    sizes = torch.multinomial(probs, batch * drawn, replacement=True, generator=generator).view(batch, drawn, 1)
    ranks = torch.rand(batch, drawn, d, generator=generator).argsort(-1).argsort(-1)  # a uniform permutation
    subsets = (ranks < sizes).float()
    return torch.cat([subsets, 1 - subsets], 1) if paired else subsets


def uniform_size_sample(batch: int, d: int, generator: torch.Generator | None = None) -> Tensor:
    """Coalitions ``[batch, d]`` whose size is uniform on ``0..d``, then a uniform subset of that size (the
    coalitions a FastSHAP surrogate is trained on)."""
    sizes = torch.randint(0, d + 1, (batch, 1), generator=generator)
    ranks = torch.rand(batch, d, generator=generator).argsort(-1).argsort(-1)
    return (ranks < sizes).float()


def cell_masks(subsets: Tensor, grid: int, size: tuple[int, int] | torch.Size) -> Tensor:
    """Pixel masks ``[..., 1, H, W]`` of coalitions ``[..., grid * grid]`` of the cells of a ``grid x grid`` grid
    (row-major cells; each cell's pixels take its 0 or 1)."""
    lead = subsets.shape[:-1]
    cells = subsets.reshape(-1, 1, grid, grid)
    return F.interpolate(cells, size=tuple(size), mode="nearest").view(*lead, 1, *tuple(size))


def distillation_loss(logits: Tensor, teacher_probs: Tensor, activation: str = "sigmoid") -> Tensor:
    """How far a student's outputs are from a teacher's probabilities (soft targets).

    ``softmax``: ``KL(p_teacher || softmax(logits))``, mean over images. ``sigmoid``: per-class Bernoulli
    cross-entropy with the teacher's probabilities as targets, mean over images and classes (the Bernoulli KL
    plus the teacher's entropy, a constant).
    """
    if activation == "sigmoid":
        return F.binary_cross_entropy_with_logits(logits, teacher_probs)
    if activation != "softmax":
        raise ValueError(f"unknown activation {activation!r}; expected 'sigmoid' or 'softmax'")
    log_teacher = teacher_probs.clamp_min(1e-12).log()
    return (teacher_probs * (log_teacher - torch.log_softmax(logits, 1))).sum(1).mean()


def efficiency_normalize(phi: Tensor, total: Tensor) -> Tensor:
    """The additive efficiency normalisation: ``phi + (total - sum(phi)) / d`` over the last (player) axis.

    Args:
        phi: ``[..., d]`` predicted values.
        total: ``[...]`` what they must sum to, ``v(1) - v(0)``.

    Returns:
        Values of the same shape whose sum over players equals ``total``.
    """
    return phi + ((total - phi.sum(-1)) / phi.shape[-1]).unsqueeze(-1)


def efficiency_gap(phi: Tensor, total: Tensor) -> Tensor:
    """``(1^T phi - total)^2`` summed over classes, mean over images: how far raw values are from efficient.

    The loss after :func:`efficiency_normalize` does not depend on the sum of the raw values; this term trains
    that sum to ``v(1) - v(0)`` so that the network alone, without the value function at inference, gives
    values that (nearly) satisfy efficiency (FastSHAP's efficiency regularisation).
    """
    return (phi.sum(-1) - total).pow(2).sum(-1).mean()


def fastshap_loss(phi: Tensor, subsets: Tensor, values: Tensor, null: Tensor, weights: Tensor | None = None) -> Tensor:
    """FastSHAP's weighted least squares: the mean over images and coalitions of
    ``|| v(S) - v(0) - 1_S^T phi ||^2`` summed over classes (the kernel weights are in the sampling).

    Args:
        phi: ``[B, C, d]`` values per class and player (already efficiency-normalised).
        subsets: ``[B, n, d]`` coalitions, 1 = player in ``S`` (from :func:`shapley_kernel_sample`).
        values: ``[B, n, C]`` the value function on each coalition, ``v(S)``.
        null: ``[B, C]`` the value function with every player removed, ``v(0)``.
        weights: ``[B, n]`` or ``[n]`` weights of the coalitions (``None``: equal, as for coalitions drawn from
            the kernel); with every coalition and its kernel probability, the loss is the exact expectation.

    Returns:
        The scalar loss.
    """
    if phi.ndim != 3 or subsets.ndim != 3 or values.ndim != 3:
        raise ValueError(
            f"expected phi [B, C, d], subsets [B, n, d] and values [B, n, C]; got {tuple(phi.shape)}, "
            f"{tuple(subsets.shape)} and {tuple(values.shape)}"
        )
    predicted = torch.einsum("bnd,bcd->bnc", subsets.to(phi.dtype), phi)
    errors = (values - null.unsqueeze(1) - predicted).pow(2).sum(-1)  # [B, n]
    if weights is None:
        return errors.mean()
    weights = weights.to(errors.dtype).expand_as(errors)
    return (errors * weights).sum() / weights.sum()


__all__ = [
    "cell_masks",
    "distillation_loss",
    "efficiency_gap",
    "efficiency_normalize",
    "fastshap_loss",
    "shapley_kernel_sample",
    "shapley_kernel_size_probabilities",
    "uniform_size_sample",
]
