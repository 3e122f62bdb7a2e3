"""The Explainer's loss terms (Stalder et al., 2022), as pure, vectorised functions.

Notation: ``S`` are the mask network's logits ``[B, C, H, W]``, ``y`` the multi-hot targets ``[B, C]``.
The target mask is ``m = sigmoid(max_{c present} S_c)`` and the non-target mask
``n = sigmoid(max_{c absent} S_c)`` (max over logits, then sigmoid). An image without present (absent)
classes has an all-zero target (non-target) mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from explainer.registry import Registry


def target_masks(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The target and non-target masks ``[B, 1, H, W]`` from mask logits and multi-hot targets."""
    present = targets.bool()[:, :, None, None]
    lowest = torch.finfo(logits.dtype).min
    target = torch.where(present, logits, lowest).amax(dim=1, keepdim=True)
    nontarget = torch.where(present, lowest, logits).amax(dim=1, keepdim=True)
    return torch.sigmoid(target), torch.sigmoid(nontarget)


def inverse_entropy_loss(logits: Tensor) -> Tensor:
    """Minus the mean per-class entropy term of the classifier's softmax on the inverse image.

    ``-mean_{b,c} H_c`` with ``H_c = -p_c log p_c`` and ``p = softmax(logits)`` clamped at 1e-16. Minimising
    it maximises the entropy of what the mask leaves out. Being a mean over C, it scales with 1/C.
    """
    p = torch.softmax(logits, dim=1).clamp(min=1e-16)
    return (p * torch.log(p)).mean()


def total_variation(mask: Tensor) -> Tensor:
    """``mean(|dx| + |dy|)`` of ``[B, 1, H, W]`` masks, with reflect padding at the right and bottom edges."""
    padded = F.pad(mask, (0, 1, 0, 1), mode="reflect")
    dx = padded[..., :-1, 1:] - padded[..., :-1, :-1]
    dy = padded[..., 1:, :-1] - padded[..., :-1, :-1]
    return (dx.abs() + dy.abs()).mean()


def class_area_loss(logits: Tensor, targets: Tensor, min_area: float = 0.05, max_area: float = 0.30) -> Tensor:
    """Keeps each present class's mask area between ``min_area`` and ``max_area`` of the image.

    For present class c: ``s = sort_desc(sigmoid(S_c))``; with ``r_min`` = ones over the first
    ``floor(min_area * H * W)`` entries (then zeros) and ``r_max`` likewise for ``max_area``,
    ``loss_c = mean(relu(r_min - s) + relu(s - r_max))``; summed over present classes, averaged over the batch.
    Computed without a full sort: since ``0 <= s <= 1``, the first term is ``k_min - sum(top k_min of s)`` and
    the second ``sum(s) - sum(top k_max of s)``, so one ``topk`` over the present classes' masks suffices.
    """
    batch, classes, height, width = logits.shape
    n = height * width
    present = targets > 0
    s = torch.sigmoid(logits.flatten(2)[present])  # [P, n]: only present classes contribute
    k_min, k_max = int(min_area * n), int(max_area * n)
    top = s.topk(max(k_min, k_max), dim=1).values
    per_class = (k_min - top[:, :k_min].sum(1) + s.sum(1) - top[:, :k_max].sum(1)) / n
    return (per_class * targets[present]).sum() / batch


def classification_loss(masked_logits: Tensor, targets: Tensor, activation: str = "sigmoid") -> Tensor:
    """How well the classifier still finds the targets in the masked image.

    ``sigmoid`` (a multi-label classifier, the paper's loss): mean binary cross-entropy over all classes.
    ``softmax`` (a single-label classifier): cross-entropy of the softmax on the target class; an image with
    several targets takes the mean over them (soft targets ``y / sum(y)``), and an image without targets
    adds nothing (the mean runs over images with targets).
    """
    if activation == "sigmoid":
        return F.binary_cross_entropy_with_logits(masked_logits, targets)
    if activation != "softmax":
        raise ValueError(f"unknown classifier activation {activation!r}; expected 'sigmoid' or 'softmax'")
    counts = targets.sum(1)
    has = counts > 0
    if not bool(has.any()):
        return masked_logits.sum() * 0.0
    soft = targets[has] / counts[has, None]
    return -(soft * torch.log_softmax(masked_logits[has], dim=1)).sum(1).mean()


@dataclass
class LossInputs:
    """What a loss term may read: the masks, the targets and the classifier's logits on both images.

    Args:
        mask_logits: ``[B, C, H, W]`` logits of the mask network.
        targets: ``[B, C]`` multi-hot targets (labels or predictions).
        masked_logits: classifier logits of the masked image ``m * x``.
        inverse_logits: classifier logits of the inverse image ``(1 - m) * x``.
        target_mask: ``m`` ``[B, 1, H, W]``.
        nontarget_mask: ``n`` ``[B, 1, H, W]``.
        activation: the classifier's output activation (``sigmoid`` or ``softmax``).
        sampled: ``[B]`` one present class per image (``-1`` for an image without one), drawn when a term
            with ``class_rows`` is on, else ``None``.
        kept_logits: classifier logits of ``m_c * x + (1 - m_c) * fill`` for the sampled class ``c``.
        removed_logits: classifier logits of ``(1 - m_c) * x + m_c * fill``.
    """

    mask_logits: Tensor
    targets: Tensor
    masked_logits: Tensor
    inverse_logits: Tensor
    target_mask: Tensor
    nontarget_mask: Tensor
    activation: str = "sigmoid"
    sampled: Tensor | None = None
    kept_logits: Tensor | None = None
    removed_logits: Tensor | None = None


@dataclass
class LossWeights:
    """Coefficients of the loss terms (the paper's names in brackets).

    Args:
        entropy: inverse-image entropy term (lambda_e).
        tv: total variation of target and non-target masks (lambda_tv).
        class_area: per-class area bounds (lambda_ac).
        target_area: mean target-mask area (lambda_m).
        nontarget_area: mean non-target-mask area (lambda_n).
        min_area: lower bound of a class's area, relative to H*W.
        max_area: upper bound of a class's area, relative to H*W.
        extra: weights of further registered terms (:data:`LOSS_TERMS`), by name, added after the paper's.
    """

    entropy: float = 1.0
    tv: float = 1.0
    class_area: float = 1.0
    target_area: float = 0.1
    nontarget_area: float = 0.3
    min_area: float = 0.05
    max_area: float = 0.30
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.extra:
            LOSS_TERMS.get(name)  # an unknown name lists the registered terms
            if name in PAPER_TERMS:
                raise ValueError(f"the loss term '{name}' is one of the paper's; set its weight with `{name}:`")

    def terms(self) -> dict[str, float]:
        """Every weighted term's weight, the paper's first and in its order, then ``extra``."""
        return {**{name: getattr(self, name) for name in PAPER_TERMS}, **self.extra}

    def class_row_terms(self) -> list[str]:
        """The terms with a non-zero weight that read the per-class images (``kept`` / ``removed_logits``)."""
        return [
            name for name, weight in self.extra.items() if weight and getattr(LOSS_TERMS.get(name), "class_rows", False)
        ]

    def needs_class_rows(self) -> bool:
        """Whether any term reads the per-class images (:meth:`class_row_terms`)."""
        return bool(self.class_row_terms())


LossTerm = Callable[[LossInputs, LossWeights], Tensor]
"""A loss term: a scalar from the inputs (and the weights' other settings, such as the area bounds)."""

LOSS_TERMS: Registry[LossTerm] = Registry("loss term", plural="loss terms")
"""The weighted terms of the Explainer's loss by name; the classification term is always on and unweighted."""

PAPER_TERMS = ("entropy", "tv", "class_area", "target_area", "nontarget_area")
"""The paper's weighted terms, in the order they are summed."""


def register_loss_term(name: str, class_rows: bool = False) -> Callable[[LossTerm], LossTerm]:
    """Decorator: ``@register_loss_term("my_term")`` on a function ``(inputs, weights) -> scalar`` makes it
    the term ``my_term``, switched on by an Explainer's ``extra_losses: {my_term: <weight>}``.

    ``class_rows=True``: the term reads ``sampled``, ``kept_logits`` and ``removed_logits``; the Explainer then
    draws one present class per image and adds its two images to the classifier's one batched pass.
    """

    def add(term: LossTerm) -> LossTerm:
        term.class_rows = class_rows  # type: ignore[attr-defined]
        return LOSS_TERMS.add(name, term)

    return add


register_loss_term("entropy")(lambda x, w: inverse_entropy_loss(x.inverse_logits))
register_loss_term("tv")(lambda x, w: total_variation(x.target_mask) + total_variation(x.nontarget_mask))
register_loss_term("class_area")(lambda x, w: class_area_loss(x.mask_logits, x.targets, w.min_area, w.max_area))
register_loss_term("target_area")(lambda x, w: x.target_mask.mean())
register_loss_term("nontarget_area")(lambda x, w: x.nontarget_mask.mean())


# -- per-class objectives beyond the paper (docs/objectives.md) -----------------------------------------------
def _present_others(targets: Tensor, sampled: Tensor) -> Tensor:
    """``[B, C]`` the present classes of each image other than its sampled one."""
    others = targets > 0
    rows = torch.nonzero(sampled >= 0)[:, 0]
    others[rows, sampled[rows]] = False
    return others


@register_loss_term("class_preservation", class_rows=True)
def class_preservation_loss(x: LossInputs, w: LossWeights) -> Tensor:
    """On ``m_c * x + (1 - m_c) * fill`` the classifier keeps the sampled class ``c`` and not the image's other
    present classes: ``-log p_c - mean_{p present, p != c} log(1 - p_p)`` under a sigmoid, the cross-entropy
    on ``c`` under a softmax. Images without a present class add 0; the mean runs over the others."""
    z, sampled = x.kept_logits.float(), x.sampled
    has = sampled >= 0
    if not bool(has.any()):
        return z.sum() * 0.0
    index = sampled.clamp(min=0)[:, None]
    if x.activation == "softmax":
        per_image = -torch.log_softmax(z, dim=1).gather(1, index)[:, 0]
    else:
        others = _present_others(x.targets, sampled).float()
        leak = (F.softplus(z) * others).sum(1) / others.sum(1).clamp(min=1)
        per_image = F.softplus(-z.gather(1, index)[:, 0]) + leak
    return per_image[has].mean()


@register_loss_term("class_deletion", class_rows=True)
def class_deletion_loss(x: LossInputs, w: LossWeights) -> Tensor:
    """On ``(1 - m_c) * x + m_c * fill`` the classifier loses the sampled class ``c``: ``-log(1 - p_c)`` (sigmoid
    or softmax probability). Images without a present class add 0."""
    z, sampled = x.removed_logits.float(), x.sampled
    has = sampled >= 0
    if not bool(has.any()):
        return z.sum() * 0.0
    index = sampled.clamp(min=0)[:, None]
    if x.activation == "softmax":
        p = torch.softmax(z, dim=1).gather(1, index)[:, 0]
        per_image = -torch.log1p(-p.clamp(max=1 - 1e-6))
    else:
        per_image = F.softplus(z.gather(1, index)[:, 0])
    return per_image[has].mean()


@register_loss_term("mask_binarisation")
def mask_binarisation_loss(x: LossInputs, w: LossWeights) -> Tensor:
    """``mean 4 m (1 - m)`` over every class mask ``m = sigmoid(S_c)``: 0 for masks of exactly 0 or 1, 1 at
    0.5; it removes the positive floor of the sigmoid masks that mass-based scores count."""
    m = torch.sigmoid(x.mask_logits.float())
    return (4 * m * (1 - m)).mean()


def explainer_loss(
    mask_logits: Tensor,
    targets: Tensor,
    masked_logits: Tensor,
    inverse_logits: Tensor,
    target_mask: Tensor,
    nontarget_mask: Tensor,
    weights: LossWeights,
    activation: str = "sigmoid",
    sampled: Tensor | None = None,
    kept_logits: Tensor | None = None,
    removed_logits: Tensor | None = None,
) -> dict[str, Tensor]:
    """The full loss and its terms.

    The arguments but ``weights`` are the fields of :class:`LossInputs`; ``weights`` holds the
    coefficients and the extra terms to add. ``activation`` sets the classification term
    (:func:`classification_loss`): ``sigmoid`` gives the paper's BCE, ``softmax`` cross-entropy on the target
    class; the other terms are the same for both.

    Returns:
        ``loss`` and each unweighted term: ``classification``, ``entropy``, ``tv``, ``class_area``,
        ``target_area``, ``nontarget_area``, then the extra terms.
    """
    inputs = LossInputs(
        mask_logits,
        targets,
        masked_logits,
        inverse_logits,
        target_mask,
        nontarget_mask,
        activation,
        sampled,
        kept_logits,
        removed_logits,
    )
    if weights.needs_class_rows() and (sampled is None or kept_logits is None or removed_logits is None):
        raise ValueError(
            "a per-class loss term is on but no per-class rows were given (sampled, kept_logits, removed_logits)"
        )
    terms = {"classification": classification_loss(masked_logits, targets, activation)}
    loss = terms["classification"]
    for name, weight in weights.terms().items():
        terms[name] = LOSS_TERMS.get(name)(inputs, weights)
        loss = loss + weight * terms[name]
    return {"loss": loss, **terms}


# -- real-time saliency (Dabkowski & Gal, NeurIPS 2017) -------------------------------------------------------
@dataclass(frozen=True)
class SaliencyWeights:
    """Coefficients of the real-time saliency objective.

    ``tv``, ``area``, ``area_power`` and the preserver : destroyer ratio ``preserve`` : ``destroy`` = 0.3 : 1 are
    the reference implementation's defaults (PiotrDabkowski/pytorch-saliency, ``SaliencyLoss``); the paper asks
    for a destroyer power ``destroy_power`` below 1, and 0.3 is used here. The area term is the reference's
    ``mean((m + 0.0005)^area_power)``, the power taken per pixel (see :func:`real_time_saliency_loss`).
    """

    tv: float = 0.5
    area: float = 8.0
    area_power: float = 0.3
    preserve: float = 0.3
    destroy: float = 1.0
    destroy_power: float = 0.3

    def __post_init__(self) -> None:
        for name in ("tv", "area", "preserve", "destroy"):
            if getattr(self, name) < 0:
                raise ValueError(f"the real-time saliency weight {name} must be >= 0, got {getattr(self, name)}")
        for name in ("area_power", "destroy_power"):
            if not getattr(self, name) > 0:
                raise ValueError(f"the real-time saliency exponent {name} must be > 0, got {getattr(self, name)}")


def real_time_saliency_loss(
    masks: Tensor, preserved: Tensor, destroyed: Tensor, real: Tensor, weights: SaliencyWeights
) -> dict[str, Tensor]:
    """``tv TV(m) + area A_p(m) + preserve (-log f_c(phi(x, m))) + destroy f_c(phi(x, 1 - m))^q``, batch mean.

    ``A_p(m) = mean((m + 0.0005)^p)``: the paper's ``A(m)^p`` as its reference implementation computes it
    (``calc_area_loss``), the power of each pixel, not of the mean area. Its gradient is largest on pixels near
    0 and small on pixels near 1, so it keeps the background empty without pressing on the evidence; the power
    of the mean presses on every pixel alike and collapses the masks (docs/learned_explainers.md).

    Args:
        masks: ``[B, 1, H, W]`` masks in [0, 1] of the selected classes.
        preserved: ``[B]`` the classifier's probability of the selected class on ``m * x + (1 - m) * fill``.
        destroyed: ``[B]`` its probability on ``(1 - m) * x + m * fill``.
        real: ``[B]`` True where the selected class is present; a *fake* (absent) class keeps only the area
            and smoothness terms, which train its mask to be empty.
        weights: the coefficients.

    Returns:
        ``loss`` and the terms ``tv``, ``area``, ``preserve``, ``destroy`` (unweighted); 0, never NaN, for a
        batch of fakes only.
    """
    real = real.to(masks.dtype)
    area = (masks + 0.0005).pow(weights.area_power).flatten(1).mean(1)
    preserve = -preserved.clamp(min=1e-6).log() * real
    destroy = destroyed.clamp(min=1e-6).pow(weights.destroy_power) * real
    terms = {
        "tv": total_variation(masks),
        "area": area.mean(),
        "preserve": preserve.mean(),
        "destroy": destroy.mean(),
    }
    loss = sum(getattr(weights, name) * value for name, value in terms.items())
    return {"loss": loss, **terms}
