"""Fitting post-hoc part-prototypes in closed form (Tan, Zhou & Chen, ICML 2024).

For a class with head weight row ``v`` (``D``) and the stacked non-negative feature vectors ``F``
(``n x D``) of the spatial locations of its training images:

0. **Locations** (two options that depart from the original, both off with ``evidence_fraction=1`` and
   ``positive_evidence_only=False``): use only the ``evidence_fraction`` of the locations with the highest
   class evidence ``x . v`` (for discovery and refinement), and run NMF on the positively weighted
   dimensions ``x * [v > 0]``. In
   multi-label scenes the class's object covers a small part of its images: on every location NMF spends
   most components on background textures, least squares gives them negative scales and their maps peak on
   background; on the quickstart digit scenes that leaves few parts on the digits (consistency 0.18
   at k=5 on 2,000 test scenes, against 0.88 with the defaults, which turn both options on;
   ``benchmarks/prototypes.py``, README "Part-prototypes on digit scenes").
1. **Discovery**: NMF ``F ~ E P`` with ``P`` in ``R^{k x D}`` (scikit-learn ``NMF``, ``nndsvda``
   initialisation, seeded); components are rescaled to unit norm.
2. **Scaling**: ``alpha = argmin ||v - sum_i alpha_i p_i||^2`` (least squares, minimum-norm solution).
3. **Refinement**: the residual ``R = v - sum_i alpha_i p_i`` is split into ``r_1..r_k`` with
   ``sum_i r_i = R`` so that each final prototype ``p~_i = alpha_i p_i + r_i`` keeps the activation-map
   shape of its component. The original work does not publish its normalisation or solver; the choice
   made here is a quadratic, exactly solvable form of "spatially normalised maps matched":

   With ``a_i = F p_i`` (the component's map over all locations), ``a^_i = a_i / ||a_i||`` and the scale
   ``s_i = ||alpha_i a_i||^2 / n`` (mean square of the scaled component map), the alignment loss is::

       L(r) = sum_i [ ||(I - a^_i a^_i^T) F r_i||^2 / n  +  mu ||F r_i||^2 / n  +  eps ||r_i||^2 ] / s_i

   The first term is the part of the final map ``F p~_i = alpha_i a_i + F r_i`` that is *not*
   proportional to the component's map, measured relative to that map's own size (the linearisation of
   matching unit-normalised maps ``F p~_i / ||F p~_i||`` and ``a^_i``); ``mu`` (``ridge``, default 0.1)
   keeps the rescaling along ``a_i`` small so maps never flip sign, and ``eps`` (``1e-9`` of the mean
   feature energy) only decides the directions that no training location ever activates.
   With ``G = F^T F / n``, ``w_i = G p_i / sqrt(p_i^T G p_i)`` and ``B = (1 + mu) G + eps I`` the loss is
   ``sum_i r_i^T A_i r_i`` with ``A_i = (B - w_i w_i^T) / s_i`` (positive definite), so the constrained
   minimum is ``r_i = A_i^{-1} lambda`` with ``lambda = (sum_i A_i^{-1})^{-1} R``; the inverses come from one
   Cholesky factorisation of ``B`` and the Sherman-Morrison formula. Everything runs in float64 and the
   split is corrected to sum to ``R`` exactly, so ``sum_i p~_i = v`` to float64 rounding.

Classes with fewer non-zero feature locations than ``k`` get fewer prototypes (zero rows pad the rest);
a class with no non-zero location keeps ``v`` itself as its single prototype, so predictions stay exact.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def bottom_k_insert(keys: Tensor, store: Tensor, new_keys: Tensor, items: Tensor) -> None:
    """Per row, keeps the entries with the smallest keys among the stored ones and new candidates (in place).

    Args:
        keys: ``[C, cap]`` stored keys (``inf`` marks an empty slot).
        store: ``[C, cap, ...]`` stored items.
        new_keys: ``[C, L]`` keys of the candidates for each row (``inf``: not offered to that row).
        items: ``[L, ...]`` the candidates.
    """
    cap = keys.shape[1]
    merged = torch.cat([keys, new_keys.to(keys)], dim=1)
    kept = merged.topk(cap, dim=1, largest=False).indices
    keep = torch.zeros_like(merged, dtype=torch.bool).scatter_(1, kept, True)
    evicted, incoming = ~keep[:, :cap], keep[:, cap:]
    count = incoming.sum(1)  # equals evicted.sum(1): exactly `cap` entries are kept per row
    width = int(count.max()) if count.numel() else 0
    if width == 0:
        return
    slot_order = torch.argsort(evicted.to(torch.int8), dim=1, descending=True, stable=True)
    new_order = torch.argsort(incoming.to(torch.int8), dim=1, descending=True, stable=True)
    rows, cols = torch.nonzero(torch.arange(width) < count[:, None], as_tuple=True)
    slots, sources = slot_order[rows, cols], new_order[rows, cols]
    store[rows, slots] = items[sources].to(store)
    keys[rows, slots] = merged[rows, cap + sources]


class LocationReservoir:
    """A bounded, seeded, uniform sample of feature locations per class, accumulated in float64 on CPU.

    Every non-zero location of an image is offered to each class present in the image. Each offer gets a
    seeded uniform key and a class keeps the ``capacity`` offers with the smallest keys ("bottom-k"
    sampling), which is a uniform sample without replacement of everything offered, computed batch-wise
    without loops over classes or locations. All-zero locations carry no information for NMF or for the
    alignment loss and are counted but not stored. Storage grows with what is offered (doubling, up to
    ``capacity``), so a dataset of many classes with few images each (CUB-200: about 1,500 locations per
    class at 7x7) never allocates ``classes x capacity`` rows up front.

    Args:
        num_classes: ``C``.
        feature_dim: ``D``.
        capacity: the most locations kept per class.
        seed: the seed of the keys.

    Raises:
        ValueError: from :meth:`add`, when a feature is negative (the decomposition needs non-negative
            features: a ReLU before the global pooling).
    """

    def __init__(self, num_classes: int, feature_dim: int, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity (max_locations_per_class) must be >= 1, got {capacity}")
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.capacity = capacity
        self.keys = torch.full((num_classes, 0), float("inf"), dtype=torch.float64)
        self.features = torch.zeros(num_classes, 0, feature_dim, dtype=torch.float64)
        self.offered = torch.zeros(num_classes, dtype=torch.long)
        self.nonzero = torch.zeros(num_classes, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(int(seed))

    def add(self, features: Tensor, labels: Tensor) -> None:
        """Offers every location of a batch to the classes present in its images.

        Args:
            features: ``[B, D, h, w]`` feature maps.
            labels: ``[B, C]`` multi-hot labels (a class is present where the label is > 0.5).
        """
        if features.ndim != 4 or features.shape[1] != self.feature_dim:
            raise ValueError(f"expected features [B, {self.feature_dim}, h, w], got {tuple(features.shape)}")
        if labels.shape != (features.shape[0], self.num_classes):
            raise ValueError(f"expected labels [{features.shape[0]}, {self.num_classes}], got {tuple(labels.shape)}")
        lowest = float(features.min()) if features.numel() else 0.0
        if lowest < 0:
            raise ValueError(
                f"the classifier's features before global pooling are negative (minimum {lowest:.4g}); post-hoc "
                "part-prototypes need non-negative features (a ReLU right before the pooling) so that NMF and "
                "the prototype maps make sense. Use a backbone that ends in a ReLU (digitnet, ResNet, DenseNet)."
            )
        batch, dim, h, w = features.shape
        x = features.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).reshape(batch * h * w, dim)
        present = (labels.detach().cpu() > 0.5).repeat_interleave(h * w, dim=0).T  # [C, L]
        useful = x.sum(1) > 0
        self.offered += present.sum(1)
        offers = present & useful
        self.nonzero += offers.sum(1)
        keys = torch.rand(self.num_classes, x.shape[0], generator=self.generator, dtype=torch.float64)
        stored = torch.isfinite(self.keys).sum(1)
        needed = int((stored + offers.sum(1)).clamp(max=self.capacity).max()) if self.num_classes else 0
        if needed > self.allocated:
            self.grow(min(self.capacity, max(needed, 2 * self.allocated)))
        if self.allocated:
            bottom_k_insert(self.keys, self.features, keys.masked_fill(~offers, float("inf")), x)

    @property
    def allocated(self) -> int:
        """Rows of storage per class (at most ``capacity``; empty slots have an infinite key)."""
        return self.keys.shape[1]

    def grow(self, rows: int) -> None:
        """Extends the storage to ``rows`` per class (no-op when it already has as many)."""
        extra = min(rows, self.capacity) - self.allocated
        if extra <= 0:
            return
        self.keys = torch.cat([self.keys, torch.full((self.num_classes, extra), float("inf"), dtype=torch.float64)], 1)
        self.features = torch.cat(
            [self.features, torch.zeros(self.num_classes, extra, self.feature_dim, dtype=torch.float64)], 1
        )

    def merge(self, keys: Tensor, features: Tensor) -> None:
        """Merges other reservoirs' contents (``keys [R, C, rows]``, ``features [R, C, rows, D]``), e.g. from
        other processes; the result is the bottom-``capacity`` sample of the union."""
        all_keys = torch.cat([self.keys, *keys.to(self.keys).unbind(0)], dim=1)
        all_feats = torch.cat([self.features, *features.to(self.features).unbind(0)], dim=1)
        kept = all_keys.topk(min(self.capacity, all_keys.shape[1]), dim=1, largest=False).indices
        self.keys = all_keys.gather(1, kept)
        self.features = all_feats.gather(1, kept[..., None].expand(-1, -1, self.feature_dim))

    def class_features(self, cls: int) -> Tensor:
        """The stored locations of class ``cls``: ``[n, D]`` float64 (``n <= capacity``)."""
        return self.features[cls][torch.isfinite(self.keys[cls])]


@dataclass
class ClassDecomposition:
    """The decomposition of one class's weight row.

    Args:
        prototypes: ``[k, D]`` final prototypes ``p~_i`` (zero rows beyond ``num_prototypes``).
        num_prototypes: how many are real (the rest pad the shape).
        components: ``[k, D]`` unit-norm NMF components ``p_i`` (zero rows beyond ``num_prototypes``).
        alpha: ``[k]`` least-squares scales.
        residual: ``[D]`` ``R = v - sum_i alpha_i p_i``.
        alignment_loss: the refinement's loss at the fitted split.
        equal_split_loss: the same loss for the equal split ``r_i = R / k``.
        locations: the number of non-zero locations used.
        note: why fewer prototypes were fitted, or empty.
    """

    prototypes: Tensor
    num_prototypes: int
    components: Tensor
    alpha: Tensor
    residual: Tensor
    alignment_loss: float
    equal_split_loss: float
    locations: int
    note: str = ""


def nmf_components(features: Tensor, k: int, seed: int = 0, max_iter: int = 400, tol: float = 1e-4) -> Tensor:
    """Unit-norm NMF components ``P`` (``[k', D]``, ``k' <= k``) of non-negative ``features`` ``[n, D]``.

    Components that NMF leaves at zero are dropped, so ``k'`` can be smaller than ``k``.
    """
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    k = min(k, features.shape[0], features.shape[1])
    model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=max_iter, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.ascontiguousarray(features.numpy()))
    comps = torch.from_numpy(np.asarray(model.components_, dtype=np.float64))
    norms = comps.norm(dim=1)
    keep = norms > 1e-12 * max(float(norms.max()), 1e-300)
    return comps[keep] / norms[keep, None]


def _refinement_terms(gram: Tensor, components: Tensor, alpha: Tensor, ridge: float) -> tuple[Tensor, Tensor, Tensor]:
    """``B``, ``W`` (``w_i`` as rows) and the scales ``s`` of the refinement loss (see the module docstring)."""
    dim = gram.shape[0]
    energy = torch.einsum("kd,de,ke->k", components, gram, components).clamp(min=1e-300)
    w = (components @ gram) / energy.sqrt()[:, None]
    scale = alpha.square() * energy
    scale = scale.clamp(min=max(1e-6 * float(scale.mean()), 1e-300))
    eps = 1e-9 * float(torch.diagonal(gram).mean()) + 1e-300
    b = (1.0 + ridge) * gram + eps * torch.eye(dim, dtype=gram.dtype)
    return b, w, scale


def alignment_loss(gram: Tensor, components: Tensor, alpha: Tensor, split: Tensor, ridge: float = 0.1) -> Tensor:
    """The refinement's loss ``sum_i r_i^T A_i r_i`` of a residual split ``split`` (``[k, D]``).

    Args:
        gram: ``G = F^T F / n`` (``[D, D]``).
        components: unit-norm NMF components ``[k, D]``.
        alpha: scales ``[k]``.
        split: ``r_1..r_k`` as rows.
        ridge: ``mu``.
    """
    b, w, scale = _refinement_terms(gram, components, alpha, ridge)
    quad = torch.einsum("kd,de,ke->k", split, b, split) - (split * w).sum(1).square()
    return (quad / scale).sum()


def refine_residual(gram: Tensor, components: Tensor, alpha: Tensor, residual: Tensor, ridge: float = 0.1) -> Tensor:
    """The split ``r_1..r_k`` (``[k, D]``, summing to ``residual``) minimising :func:`alignment_loss`."""
    b, w, scale = _refinement_terms(gram, components, alpha, ridge)
    chol = torch.linalg.cholesky(b)
    z = torch.cholesky_solve(w.T, chol).T  # rows z_i = B^-1 w_i
    denom = 1.0 - (z * w).sum(1)  # >= mu / (1 + mu) > 0
    b_inv = torch.cholesky_inverse(chol)
    total = scale.sum() * b_inv + (z.T * (scale / denom)) @ z  # sum_i A_i^-1
    lam = torch.linalg.solve(total, residual)
    split = scale[:, None] * ((b_inv @ lam)[None, :] + z * ((z @ lam) / denom)[:, None])
    return split + (residual - split.sum(0)) / split.shape[0]  # exact sum despite rounding


def select_evidence_locations(features: Tensor, weight: Tensor, fraction: float, minimum: int = 1) -> Tensor:
    """The locations with the highest class evidence ``x . v``: the top ``fraction`` of the rows (at least
    ``minimum``, at most all)."""
    if fraction >= 1.0 or features.shape[0] == 0:
        return features
    count = min(features.shape[0], max(minimum, math.ceil(fraction * features.shape[0])))
    return features[(features @ weight).topk(count).indices]


def _single(v: Tensor, k: int, locations: int, note: str) -> ClassDecomposition:
    empty = torch.zeros(k, v.shape[0], dtype=torch.float64)
    protos = empty.clone()
    protos[0] = v
    return ClassDecomposition(
        protos,
        1,
        empty,
        torch.zeros(k, dtype=torch.float64),
        torch.zeros_like(v),
        0.0,
        0.0,
        locations,
        f"{note}: the class keeps its weight row as a single prototype",
    )


def decompose_class(
    features: Tensor,
    weight: Tensor,
    k: int,
    seed: int = 0,
    ridge: float = 0.1,
    nmf_max_iter: int = 400,
    nmf_tol: float = 1e-4,
    evidence_fraction: float = 1.0,
    positive_evidence_only: bool = False,
) -> ClassDecomposition:
    """Decomposes one class's weight row into ``k`` prototypes that sum to it exactly.

    Args:
        features: ``[n, D]`` non-negative feature locations of the class's training images.
        weight: ``[D]`` the class's head weight row ``v``.
        k: prototypes per class.
        seed: NMF seed.
        ridge: ``mu`` of the refinement loss.
        nmf_max_iter: NMF iterations.
        nmf_tol: NMF tolerance.
        evidence_fraction: share of the locations, those with the highest class evidence ``x . v``, used
            for discovery and refinement (1.0: every location, as in the original method).
        positive_evidence_only: run NMF on the feature dimensions with a positive class weight only, so the
            parts are parts of the evidence *for* the class (the original uses every dimension).

    Returns:
        The decomposition (``prototypes.sum(0) == weight`` up to float64 rounding).
    """
    if not 0 < evidence_fraction <= 1:
        raise ValueError(f"evidence_fraction must be in (0, 1], got {evidence_fraction}")
    v = weight.detach().to("cpu", torch.float64)
    x = features.detach().to("cpu", torch.float64)
    x = x[x.sum(1) > 0]
    if x.shape[0] == 0:
        return _single(v, k, 0, "no non-zero feature location")
    x = select_evidence_locations(x, v, evidence_fraction, minimum=k)
    discover = x * (v > 0).to(x.dtype) if positive_evidence_only else x
    discover = discover[discover.sum(1) > 0]
    if discover.shape[0] == 0:
        return _single(v, k, x.shape[0], "no location activates a positively weighted feature")
    comps = nmf_components(discover, k, seed=seed, max_iter=nmf_max_iter, tol=nmf_tol)
    if comps.shape[0] == 0:
        return _single(v, k, x.shape[0], "NMF found no non-zero component")
    m = comps.shape[0]
    alpha = torch.linalg.lstsq(comps.T, v[:, None], driver="gelsd").solution[:, 0]
    residual = v - alpha @ comps
    gram = x.T @ x / x.shape[0]
    split = refine_residual(gram, comps, alpha, residual, ridge)
    loss = float(alignment_loss(gram, comps, alpha, split, ridge))
    equal = float(alignment_loss(gram, comps, alpha, residual.expand(m, -1) / m, ridge))
    empty = torch.zeros(k, v.shape[0], dtype=torch.float64)
    protos, padded_comps, padded_alpha = empty.clone(), empty.clone(), torch.zeros(k, dtype=torch.float64)
    protos[:m] = alpha[:, None] * comps + split
    padded_comps[:m], padded_alpha[:m] = comps, alpha
    note = "" if m == k else f"only {m} of {k} prototypes ({discover.shape[0]} non-zero locations)"
    return ClassDecomposition(protos, m, padded_comps, padded_alpha, residual, loss, equal, x.shape[0], note)


__all__ = [
    "ClassDecomposition",
    "LocationReservoir",
    "alignment_loss",
    "bottom_k_insert",
    "decompose_class",
    "nmf_components",
    "refine_residual",
    "select_evidence_locations",
]
